#include "mixsim/data/loader.hpp"

#include <algorithm>

#include "mixsim/core/error.hpp"
#include "mixsim/core/rng.hpp"

namespace mixsim {
namespace {

constexpr std::uint64_t kUnitOrderStream = 1;    // which unit fills each slot of a round
constexpr std::uint64_t kWindowOrderStream = 2;  // offset and window order of each pass over a unit

}  // namespace

std::uint64_t permute(std::uint64_t i, std::uint64_t n, std::uint64_t key) {
  MIXSIM_CHECK(i < n, "permute: {} is not below {}", i, n);
  if (n == 1) return 0;
  // A balanced Feistel network on 2*half bits is a bijection of [0, 4^half); with 4^half < 4n,
  // walking the cycle until the value falls below n takes fewer than 4 rounds on average.
  int half = 1;
  while ((std::uint64_t{1} << (2 * half)) < n) ++half;
  const std::uint64_t mask = (std::uint64_t{1} << half) - 1;
  do {
    std::uint64_t left = i >> half, right = i & mask;
    for (std::uint64_t round = 0; round < 4; ++round) {
      const std::uint64_t next = left ^ (hash64(key + round, right) & mask);
      left = right;
      right = next;
    }
    i = (left << half) | right;
  } while (i >= n);
  return i;
}

BatchLoader::BatchLoader(std::vector<std::vector<Token>> units, const LoaderConfig& config,
                         std::vector<std::string> names)
    : units_(std::move(units)), config_(config) {
  if (units_.empty()) usage_fail("the batch loader needs at least one unit");
  if (config_.context < 1) usage_fail("the context length must be at least 1");
  if (config_.ranks < 1 || config_.rank < 0 || config_.rank >= config_.ranks)
    usage_fail("rank {} of {} is not a valid data-parallel rank", config_.rank, config_.ranks);
  if (config_.global_batch < 1 ||
      config_.global_batch % static_cast<std::size_t>(config_.ranks) != 0)
    usage_fail(
        "the global batch ({} windows) must be a positive multiple of the number of "
        "data-parallel ranks ({}): change the batch size or the rank count",
        config_.global_batch, config_.ranks);
  for (std::size_t u = 0; u < units_.size(); ++u)
    if (units_[u].size() < config_.context + 1)
      fail(
          "unit '{}' has {} tokens, fewer than one window (context + 1 = {}): lower "
          "model.context or raise data.unit_tokens",
          u < names.size() ? names[u] : std::to_string(u), units_[u].size(), config_.context + 1);
  const Rng root(config_.seed);
  unit_order_key_ = root.split(kUnitOrderStream).key();
  window_order_key_ = root.split(kWindowOrderStream).key();
}

std::uint64_t BatchLoader::windows_per_pass(std::size_t unit) const {
  return (units_[unit].size() - 1) / config_.context;
}

Window BatchLoader::window(std::uint64_t step, std::size_t index) const {
  MIXSIM_CHECK(index < config_.global_batch, "window index {} beyond the batch", index);
  const std::uint64_t K = units_.size();
  const std::uint64_t T = config_.context;
  // Global window g belongs to round g / K, in which each unit gets exactly one window: the
  // round's slots are a shuffle of the units, and a unit's n-th window is the one of round n.
  const std::uint64_t g = step * config_.global_batch + index;
  const std::uint64_t round = g / K;
  const std::size_t unit =
      static_cast<std::size_t>(permute(g % K, K, hash64(unit_order_key_, round)));

  // Each pass over the unit takes W disjoint windows in a shuffled order, all shifted by one
  // offset in [0, S) so that repeated passes see other cuts of the text (S = leftover + 1 <= T).
  const std::uint64_t n_tokens = units_[unit].size();
  const std::uint64_t W = windows_per_pass(unit);
  const std::uint64_t S = n_tokens - W * T;
  const std::uint64_t pass = round / W;
  const std::uint64_t key = hash64(hash64(window_order_key_, unit), pass);
  const std::uint64_t shift = S > 1 ? hash64(key, ~std::uint64_t{0}) % S : 0;
  return {unit, shift + T * permute(round % W, W, key)};
}

void BatchLoader::fill(std::uint64_t step, std::span<std::int32_t> inputs,
                       std::span<std::int32_t> targets) const {
  const std::size_t T = config_.context;
  const std::size_t rows = local_batch();
  MIXSIM_CHECK(inputs.size() == rows * T && targets.size() == rows * T,
               "batch buffers hold {} and {} tokens, expected {}", inputs.size(), targets.size(),
               rows * T);
  for (std::size_t i = 0; i < rows; ++i) {
    const Window w = window(step, first_index() + i);
    const Token* src = units_[w.unit].data() + w.start;
    for (std::size_t t = 0; t < T; ++t) {
      inputs[i * T + t] = src[t];
      targets[i * T + t] = src[t + 1];
    }
  }
}

// ---------------------------------------------------------------------------------------------

EvalWindows::EvalWindows(std::span<const Token> tokens, std::size_t context, Token pad)
    : tokens_(tokens), context_(context), pad_(pad) {
  if (context_ < 1) usage_fail("the context length must be at least 1");
}

std::size_t EvalWindows::count() const {
  return tokens_.size() < 2 ? 0 : (tokens_.size() - 1 + context_ - 1) / context_;
}

std::uint64_t EvalWindows::scored_tokens() const {
  return tokens_.size() < 2 ? 0 : tokens_.size() - 1;
}

std::size_t EvalWindows::scored_in(std::size_t w) const {
  MIXSIM_CHECK(w < count(), "eval window {} of {}", w, count());
  return std::min(context_, tokens_.size() - 1 - w * context_);
}

void EvalWindows::fill(std::size_t w, std::span<std::int32_t> inputs,
                       std::span<std::int32_t> targets) const {
  MIXSIM_CHECK(inputs.size() == context_ && targets.size() == context_,
               "eval window buffers must hold the context length {}", context_);
  const std::size_t start = w * context_;
  const std::size_t scored = scored_in(w);
  for (std::size_t t = 0; t < context_; ++t) {
    inputs[t] = start + t < tokens_.size() ? tokens_[start + t] : pad_;
    targets[t] = t < scored ? tokens_[start + t + 1] : -1;
  }
}

std::pair<std::size_t, std::size_t> EvalWindows::shard(int rank, int ranks) const {
  MIXSIM_CHECK(ranks > 0 && rank >= 0 && rank < ranks, "shard {} of {}", rank, ranks);
  const std::size_t n = count(), p = static_cast<std::size_t>(ranks),
                    r = static_cast<std::size_t>(rank);
  const std::size_t base = n / p, extra = n % p;
  const std::size_t first = r * base + std::min(r, extra);
  return {first, first + base + (r < extra ? 1 : 0)};
}

}  // namespace mixsim
