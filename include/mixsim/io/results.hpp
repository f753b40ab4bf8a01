// results.h5: what merge-eval measured. Units, eval sets and mixtures (members and each proxy's
// weights), a mixtures x eval-sets loss matrix per proxy (NaN: not evaluated yet), and the scores
// of the pool models, the seed and the truth models. Entries are keyed by names, never by
// position, so a rerun with more units, mixtures or eval sets keeps every value that is still
// valid. Layout: docs/file-formats.md, "results.h5".
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace mixsim {

inline constexpr const char* kResultsFormat = "mixsim-results";
inline constexpr std::int64_t kResultsFormatVersion = 1;

// A dense row-major matrix of doubles; NaN marks an entry not evaluated yet.
struct Matrix {
  std::size_t rows = 0, cols = 0;
  std::vector<double> values;

  static Matrix nan(std::size_t rows, std::size_t cols) {
    return {rows, cols, std::vector<double>(rows * cols, std::numeric_limits<double>::quiet_NaN())};
  }
  double& at(std::size_t r, std::size_t c) { return values[r * cols + c]; }
  double at(std::size_t r, std::size_t c) const { return values[r * cols + c]; }
  bool operator==(const Matrix&) const = default;  // NaN != NaN: compare with same_values
};

// Equal shapes, and equal values where NaN equals NaN.
bool same_values(const Matrix& a, const Matrix& b);

struct ResultsUnit {
  std::string name;       // "news/0"
  std::string partition;  // its source partition
  std::uint64_t tokens = 0;
  std::string checksum;  // params_crc32 of the pool model scored; "" when it has none
};

struct ResultsEvalSet {
  std::string name;
  std::string kind;       // "partition" | "ood"
  std::string partition;  // own partition (kind "partition"), else ""
  std::uint64_t tokens = 0;
  std::uint64_t scored_tokens = 0;  // the loss is a mean over these
  std::uint64_t bytes = 0;  // text bytes: bits per byte = loss * scored_tokens / (ln 2 * bytes)
  std::string checksum;     // CRC-32 of the token array (uint16 little-endian)
};

struct ResultsMixture {
  std::string name;                  // members' names joined by '+', in unit order
  std::vector<std::size_t> members;  // indices into Results::units, ascending
  bool in_space = true;              // asked for by the run that wrote the file
  std::string truth_checksum;        // params_crc32 of its truth model; "" when none
};

struct ProxyResults {
  std::string name;                          // merged | weighted | macro | components
  std::vector<std::vector<double>> weights;  // per mixture, aligned with its members
  Matrix loss;                               // mixtures x eval sets, nats per token
};

struct Results {
  std::string created_by;
  std::string data_file;
  std::string seed_file;
  std::string seed_checksum;
  std::int64_t context = 0;  // eval window length: the model's context
  bool complete = false;     // every entry of the mixtures in the space is evaluated
  std::vector<ResultsUnit> units;
  std::vector<ResultsEvalSet> eval_sets;
  std::vector<ResultsMixture> mixtures;
  std::vector<ProxyResults> proxies;
  Matrix pool_loss;               // units x eval sets: each pool model alone
  std::vector<double> seed_loss;  // eval sets
  Matrix truth_loss;              // mixtures x eval sets: the mixture's truth model

  std::optional<std::size_t> unit_index(const std::string& name) const;
  std::optional<std::size_t> eval_set_index(const std::string& name) const;
  std::optional<std::size_t> mixture_index(const std::string& name) const;
  std::optional<std::size_t> proxy_index(const std::string& name) const;
  // Entries still NaN that a run could fill: proxies other than components over the mixtures in
  // the space, pool models that exist, the seed, and the truth models of mixtures in the space.
  std::size_t missing() const;
};

// Writes atomically (temporary name, then rename).
void write_results(const std::filesystem::path& path, const Results& results);

// Reads and checks format, version and the shapes of every table; an Error names the file.
Results read_results(const std::filesystem::path& path);

// Copies into `fresh` every value of `old` that still holds, matched by name: a proxy entry when
// the seed, the eval set (checksum), every member's pool model (checksum) and the proxy's weights
// are unchanged; pool, seed and truth scores likewise. Mixtures of `old` missing from `fresh` whose
// units all still have the same pool models are appended with in_space = false. Returns the number
// of values copied.
std::size_t carry_over(Results& fresh, const Results& old);

// The components proxy from the pool scores: each mixture's loss on an eval set is the mean of its
// members' own losses (NaN while one is missing); weights 1/k.
void fill_components(Results& results);

// Bits per byte of a loss (nats per scored token) on an eval set.
inline double bits_per_byte(double loss, const ResultsEvalSet& e) {
  return e.bytes ? loss * static_cast<double>(e.scored_tokens) /
                       (std::log(2.0) * static_cast<double>(e.bytes))
                 : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace mixsim
