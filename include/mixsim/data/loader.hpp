// Training batches and eval windows over token arrays.
//
// BatchLoader: a global batch of B windows of T+1 tokens per step, from a mixture of units in
// which every unit contributes equally (each run of K consecutive windows holds one window of
// each of the K units, so a small unit is repeated as often as the paper's unions repeat it).
// Window (step, index) is a pure function of the seed, step and index: the order is deterministic,
// resuming at step s needs no state, and rank r of p takes the contiguous slice
// [r*B/p, (r+1)*B/p) of every global batch, disjoint from the other ranks' slices.
//
// EvalWindows: the disjoint context-length windows of an eval set; every token but the first is a
// target exactly once (the last window may be short: its missing targets are -1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mixsim/data/tokenizer.hpp"

namespace mixsim {

// A pseudo-random bijection of [0, n) named by `key` (a cycle-walked Feistel network): the i-th
// element of a shuffle, computed without storing the shuffle.
std::uint64_t permute(std::uint64_t i, std::uint64_t n, std::uint64_t key);

struct LoaderConfig {
  std::size_t context = 64;      // T: a window is T inputs and the T next tokens as targets
  std::size_t global_batch = 8;  // B: windows per step over all ranks (a multiple of ranks)
  std::uint64_t seed = 0;        // data-order seed (split it from run.seed)
  int rank = 0;                  // this rank and the number of data-parallel ranks
  int ranks = 1;
};

struct Window {
  std::size_t unit = 0;     // index into the loader's units
  std::uint64_t start = 0;  // first token; the window is tokens [start, start + T + 1)
  bool operator==(const Window&) const = default;
};

class BatchLoader {
 public:
  // `names` (optional, same length as `units`) only serve error messages.
  BatchLoader(std::vector<std::vector<Token>> units, const LoaderConfig& config,
              std::vector<std::string> names = {});

  std::size_t unit_count() const { return units_.size(); }
  std::size_t context() const { return config_.context; }
  std::size_t global_batch() const { return config_.global_batch; }
  std::size_t local_batch() const { return config_.global_batch / config_.ranks; }
  std::size_t first_index() const { return local_batch() * config_.rank; }  // in the global batch
  const std::vector<Token>& unit_tokens(std::size_t unit) const { return units_[unit]; }

  // Window `index` (0 <= index < B) of the global batch of `step`.
  Window window(std::uint64_t step, std::size_t index) const;
  // This rank's share of step `step`: inputs and targets are (local_batch, T), row-major; row i is
  // global window first_index() + i.
  void fill(std::uint64_t step, std::span<std::int32_t> inputs,
            std::span<std::int32_t> targets) const;

  // Disjoint windows one pass over `unit` takes (each pass uses a fresh offset and order).
  std::uint64_t windows_per_pass(std::size_t unit) const;

 private:
  std::vector<std::vector<Token>> units_;
  LoaderConfig config_;
  std::uint64_t unit_order_key_;
  std::uint64_t window_order_key_;
};

// Views `tokens` (which must outlive it); windows are computed on demand.
class EvalWindows {
 public:
  EvalWindows(std::span<const Token> tokens, std::size_t context, Token pad = 0);

  std::size_t count() const;                   // ceil((n - 1) / T); 0 when n < 2
  std::uint64_t scored_tokens() const;         // n - 1: every token but the first
  std::size_t scored_in(std::size_t w) const;  // targets of window w that are not -1
  // Window w: inputs are tokens [w*T, w*T + T) (padded with `pad` past the end), targets the next
  // token of each input, or -1 where there is none.
  void fill(std::size_t w, std::span<std::int32_t> inputs, std::span<std::int32_t> targets) const;
  // The windows of rank r of p: a contiguous block [first, second), sizes differing by at most 1.
  std::pair<std::size_t, std::size_t> shard(int rank, int ranks) const;

 private:
  std::span<const Token> tokens_;
  std::size_t context_;
  Token pad_;
};

}  // namespace mixsim
