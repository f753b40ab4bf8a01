// A table of cuBLASLt algorithm choices: for a GPU model, a cuBLASLt version and one product (as
// the CUDA backend's LtMatmul keys it, kernels/matmul.cu), which of the heuristic's answers to
// run. MIXSIM_CUBLASLT_TUNE=1 times the candidates and writes the winners to such a table
// (MIXSIM_CUBLASLT_TUNE_OUT); without it, LtMatmul runs the table's choice where it has one (the
// build's kernels/cublaslt_choices.txt, or MIXSIM_CUBLASLT_CHOICES_FILE) and the heuristic's
// first answer elsewhere. The heuristic is a fixed function of the device, the version and the
// problem, so a choice named by its place in the heuristic's answers is the same algorithm in
// every process: a run, its resume and every rank multiply alike, which timing on every start
// would not promise. Each choice also keeps the algorithm's configuration, which LtMatmul checks
// against the candidate it names (a changed heuristic shows as a mismatch, not as another
// algorithm run silently).
//
// The text form, one choice a line (`#` starts a comment line), every field NAME=VALUE, each once,
// in any order; `device` is the CUDA device's name with '_' for spaces:
//   device=NVIDIA_H200 cublaslt=130200 m=768 n=8192 k=3072 ta=0 tb=0 a=14 epilogue=0 lda=768 ...
//   ... d=14 pick=2 algo=66 tile=... cluster=0 us=51.20 first_us=57.90
// Plain C++ (no CUDA types: cuBLASLt's enums as their integer values), so that the CPU tests read
// and write it too. docs/architecture.md, "cuBLASLt's algorithm choices".
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "mixsim/core/error_types.hpp"

namespace mixsim::cublaslt {

// A product as LtMatmul keys it, in its key's order: the shape, the transposes, the operands'
// type, the epilogue, the leading dimensions, the pointers' alignments (bytes), the aux matrix's
// leading dimension, and D's type (cudaDataType_t values).
inline constexpr std::array<std::string_view, 17> kKeyFields = {
    "m",   "n",       "k",       "ta",      "tb",         "a",         "epilogue", "lda", "ldb",
    "ldd", "align_a", "align_b", "align_d", "align_bias", "align_aux", "aux_ld",   "d"};
using Key = std::array<long long, kKeyFields.size()>;

// An algorithm's configuration as cublasLtMatmulAlgoConfigGetAttribute reads it: the algorithm
// id, tile, stages, split-K parts, reduction scheme, CTA swizzling, custom option, inner shape
// and cluster shape.
inline constexpr std::array<std::string_view, 9> kConfigFields = {
    "algo", "tile", "stages", "splitk", "reduction", "swizzle", "custom", "inner", "cluster"};
using Config = std::array<long long, kConfigFields.size()>;

// The most candidates LtMatmul asks the heuristic for (a pick is below it).
inline constexpr int kMaxPick = 8;

struct Choice {
  std::string device;      // cudaDeviceProp::name, spaces as '_'
  long long cublaslt = 0;  // cublasLtGetVersion()
  Key key{};
  int pick = 0;  // the chosen candidate's place in the heuristic's answers (0: its first)
  Config config{};
  double us = 0, first_us = 0;  // as timed: the choice's and the first answer's µs a call
};

// The device name as a table field: spaces (and tabs) become '_'.
inline std::string device_field(std::string_view name) {
  std::string s(name);
  std::replace_if(
      s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t'; }, '_');
  return s;
}

class Choices {
 public:
  // The table in `text`; `source` names it in errors (a file name). A malformed line is a
  // UsageError naming the source, the line, the field and what to do.
  static Choices parse(std::string_view text, const std::string& source) {
    Choices table;
    int line_no = 0;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t end = std::min(text.find('\n', at), text.size());
      std::string_view line = text.substr(at, end - at);
      at = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      const std::size_t first = line.find_first_not_of(" \t");
      if (first == std::string_view::npos || line[first] == '#') continue;
      table.put_new(parse_line(line, source, line_no), source, line_no);
    }
    return table;
  }

  // The table in the file at `path` (UsageError naming it when it cannot be read or parsed).
  static Choices read(const std::string& path) {
    const auto unreadable = [&path] {
      return UsageError("cuBLASLt choices file " + path +
                        ": cannot be read (give an existing table, e.g. one that "
                        "MIXSIM_CUBLASLT_TUNE_OUT wrote)");
    };
    std::error_code ec;  // (a directory opens as a stream, and reads as nothing)
    if (!std::filesystem::is_regular_file(path, ec)) throw unreadable();
    std::ifstream in(path, std::ios::binary);
    if (!in) throw unreadable();
    std::ostringstream text;
    text << in.rdbuf();  // (an empty file fails this insertion: an empty table)
    if (in.bad()) throw unreadable();
    return parse(text.str(), path);
  }

  // The choice for this device, version and product, or null.
  const Choice* find(std::string_view device, long long cublaslt, const Key& key) const {
    const auto it = choices_.find(Id{std::string(device), cublaslt, key});
    return it == choices_.end() ? nullptr : &it->second;
  }
  // Adds c, replacing the choice for the same device, version and product.
  void put(Choice c) {
    Id id{c.device, c.cublaslt, c.key};
    choices_.insert_or_assign(std::move(id), std::move(c));
  }
  // Every choice of `other` put into this table.
  void merge(const Choices& other) {
    for (const auto& [id, c] : other.choices_) put(c);
  }
  std::size_t size() const { return choices_.size(); }
  // Every choice, ordered as format() writes them.
  std::vector<Choice> list() const {
    std::vector<Choice> all;
    for (const auto& [id, c] : choices_) all.push_back(c);
    return all;
  }

  // The text form: a header comment, then one line a choice, ordered by device, version and key.
  std::string format() const {
    std::string out =
        "# mixsim's cuBLASLt algorithm choices (format: "
        "include/mixsim/backend/cublaslt_choices.hpp)\n"
        "# written by MIXSIM_CUBLASLT_TUNE=1 MIXSIM_CUBLASLT_TUNE_OUT=FILE "
        "(scripts/gpu-check.sh's\n"
        "# tune step); kernels/cublaslt_choices.txt is the table built into mixsim. pick: the\n"
        "# candidate's place in the heuristic's answers; us, first_us: its time and the first\n"
        "# answer's, in microseconds a call.\n";
    for (const auto& [id, c] : choices_) out += format_line(c) + "\n";
    return out;
  }

  // Writes the text form to `path` through a file beside it (PATH.tmp.PID, as mixsim's HDF5
  // files), renamed over it: a reader never sees half a table, and processes writing the same
  // path at once each rename a whole one. Error naming the path when it cannot.
  // The file beside it is removed again when the write or the rename fails.
  void write(const std::string& path) const {
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    std::error_code ec;
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << format();
      out.close();
      if (!out) {
        std::filesystem::remove(tmp, ec);
        throw Error("cuBLASLt choices file " + tmp + ": cannot be written (check the directory)");
      }
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      const std::string why = ec.message();
      std::filesystem::remove(tmp, ec);
      throw Error("cuBLASLt choices file " + path + ": cannot be replaced: " + why);
    }
  }

  static std::string format_line(const Choice& c) {
    std::string s;
    const auto field = [&s](std::string_view name, const std::string& value) {
      if (!s.empty()) s.push_back(' ');
      s.append(name).push_back('=');
      s.append(value);
    };
    field("device", c.device);
    field("cublaslt", std::to_string(c.cublaslt));
    for (std::size_t i = 0; i < kKeyFields.size(); ++i)
      field(kKeyFields[i], std::to_string(c.key[i]));
    field("pick", std::to_string(c.pick));
    for (std::size_t i = 0; i < kConfigFields.size(); ++i)
      field(kConfigFields[i], std::to_string(c.config[i]));
    char time[32];
    std::snprintf(time, sizeof time, "%.2f", c.us);
    field("us", time);
    std::snprintf(time, sizeof time, "%.2f", c.first_us);
    field("first_us", time);
    return s;
  }

 private:
  using Id = std::tuple<std::string, long long, Key>;
  std::map<Id, Choice> choices_;

  void put_new(Choice c, const std::string& source, int line_no) {
    if (find(c.device, c.cublaslt, c.key))
      throw UsageError("cuBLASLt choices file " + source + ", line " + std::to_string(line_no) +
                       ": a second choice for the same device, cublaslt and product (keep one)");
    put(std::move(c));
  }

  // A line's fields in their places: device, cublaslt, the key, pick, the configuration, us,
  // first_us.
  static constexpr std::size_t kPick = 2 + kKeyFields.size(), kConfig = kPick + 1,
                               kUs = kConfig + kConfigFields.size(), kFields = kUs + 2;
  static std::string_view field_name(std::size_t place) {
    if (place == 0) return "device";
    if (place == 1) return "cublaslt";
    if (place < kPick) return kKeyFields[place - 2];
    if (place == kPick) return "pick";
    if (place < kUs) return kConfigFields[place - kConfig];
    return place == kUs ? "us" : "first_us";
  }

  static Choice parse_line(std::string_view line, const std::string& source, int line_no) {
    const auto fail = [&](const std::string& what) {
      return UsageError("cuBLASLt choices file " + source + ", line " + std::to_string(line_no) +
                        ": " + what +
                        " (every line is NAME=VALUE fields, as MIXSIM_CUBLASLT_TUNE_OUT writes "
                        "them; regenerate the table or fix the line)");
    };
    Choice c;
    std::array<bool, kFields> seen{};
    for (std::size_t at = 0; at < line.size();) {
      const std::size_t begin = line.find_first_not_of(" \t", at);
      if (begin == std::string_view::npos) break;
      const std::size_t end = std::min(line.find_first_of(" \t", begin), line.size());
      const std::string_view token = line.substr(begin, end - begin);
      at = end;
      const std::size_t eq = token.find('=');
      if (eq == std::string_view::npos || eq == 0 || eq + 1 == token.size())
        throw fail("field '" + std::string(token) + "' is not NAME=VALUE");
      const std::string_view name = token.substr(0, eq), value = token.substr(eq + 1);
      std::size_t place = 0;
      while (place < kFields && field_name(place) != name) ++place;
      if (place == kFields) throw fail("unknown field '" + std::string(name) + "'");
      if (seen[place]) throw fail("field '" + std::string(name) + "' given twice");
      seen[place] = true;
      if (place == 0) {
        c.device = std::string(value);
      } else if (place >= kUs) {
        double v = 0;
        const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (ec != std::errc() || ptr != value.data() + value.size() || !(v >= 0))
          throw fail("field '" + std::string(name) + "': '" + std::string(value) +
                     "' is not a time in microseconds");
        (place == kUs ? c.us : c.first_us) = v;
      } else {
        long long v = 0;
        const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (ec != std::errc() || ptr != value.data() + value.size())
          throw fail("field '" + std::string(name) + "': '" + std::string(value) +
                     "' is not an integer");
        if (place == 1) {
          c.cublaslt = v;
        } else if (place < kPick) {
          c.key[place - 2] = v;
        } else if (place == kPick) {
          if (v < 0 || v >= kMaxPick)
            throw fail("pick=" + std::string(value) + " is not a candidate's place (0 to " +
                       std::to_string(kMaxPick - 1) + ")");
          c.pick = int(v);
        } else {
          c.config[place - kConfig] = v;
        }
      }
    }
    for (std::size_t place = 0; place < kFields; ++place)
      if (!seen[place]) throw fail("field '" + std::string(field_name(place)) + "' is missing");
    return c;
  }
};

}  // namespace mixsim::cublaslt
