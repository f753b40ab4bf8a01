#include "mixsim/data/eval_sets.hpp"

#include <algorithm>
#include <limits>
#include <numeric>
#include <utility>

namespace mixsim {

std::vector<std::size_t> sample_documents(std::size_t count, std::uint64_t max_docs, Rng rng) {
  std::vector<std::size_t> index(count);
  std::iota(index.begin(), index.end(), std::size_t{0});
  if (count <= max_docs) return index;
  // Partial Fisher-Yates: the first max_docs places receive a uniform sample without repeats.
  const auto keep = static_cast<std::size_t>(max_docs);
  for (std::size_t i = 0; i < keep; ++i) std::swap(index[i], index[i + rng.below(count - i)]);
  index.resize(keep);
  std::sort(index.begin(), index.end());
  return index;
}

namespace {

// The smallest share of a spread eval set's document that is worth its end-of-text token and
// its hard first tokens: several context windows of the small models this is used with.
constexpr std::uint64_t kMinShare = 512;

// Water-filling cap of `budget` over `lengths`: the largest c with sum min(length, c) <= budget
// (no limit when everything fits).
std::uint64_t share_cap(std::vector<std::uint64_t> lengths, std::uint64_t budget) {
  std::sort(lengths.begin(), lengths.end());
  std::uint64_t used = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    const std::uint64_t open = lengths.size() - i;  // documents of at least lengths[i]
    if (used + lengths[i] * open > budget) return (budget - used) / open;
    used += lengths[i];
  }
  return std::numeric_limits<std::uint64_t>::max();
}

// Shares of `budget` tokens over documents of `lengths` tokens, each as equal as the lengths
// allow: min(length, cap), and the few tokens left under cap + 1 go one each to the first
// documents longer than the cap. The shares add up to min(budget, sum of lengths).
std::vector<std::uint64_t> equal_shares(const std::vector<std::uint64_t>& lengths,
                                        std::uint64_t budget) {
  const std::uint64_t cap = share_cap(lengths, budget);
  std::vector<std::uint64_t> shares;
  std::uint64_t left = budget;
  for (std::uint64_t length : lengths) {
    shares.push_back(std::min(length, cap));
    left -= shares.back();
  }
  for (std::size_t i = 0; i < lengths.size() && left > 0; ++i)
    if (lengths[i] > cap) {
      ++shares[i];
      --left;
    }
  return shares;
}

}  // namespace

TokenSet build_eval_set(std::span<const Document* const> documents, const EvalLimits& limits,
                        const Tokenizer& tokenizer, Rng rng) {
  TokenSet set;
  std::vector<std::size_t> keep = sample_documents(documents.size(), limits.max_docs, rng);
  if (!limits.spread) {
    for (std::size_t i : keep)
      if (!set.append(tokenizer, *documents[i], limits.max_tokens)) break;
    return set;
  }
  // Spread: documents are taken in a seeded random order for as long as every one still gets a
  // share of at least kMinShare tokens (or all of itself), then stored in their order with
  // shares as equal as the lengths allow.
  Rng order_rng = rng.split(1);
  for (std::size_t i = keep.size(); i > 1; --i)
    std::swap(keep[i - 1], keep[order_rng.below(i)]);
  std::vector<std::pair<std::size_t, std::uint64_t>> chosen;  // (document, EOT + its tokens)
  std::vector<std::uint64_t> lengths;
  std::vector<Token> scratch;
  for (std::size_t i : keep) {
    scratch.clear();
    tokenizer.encode(documents[i]->text, scratch);
    lengths.push_back(1 + scratch.size());
    if (!chosen.empty() && share_cap(lengths, limits.max_tokens) < kMinShare) break;
    chosen.emplace_back(i, lengths.back());
  }
  std::sort(chosen.begin(), chosen.end());
  lengths.clear();
  for (const auto& [doc, length] : chosen) lengths.push_back(length);
  const std::vector<std::uint64_t> shares = equal_shares(lengths, limits.max_tokens);
  for (std::size_t j = 0; j < chosen.size(); ++j)
    if (shares[j] > 0)
      set.append(tokenizer, *documents[chosen[j].first], set.tokens.size() + shares[j]);
  return set;
}

}  // namespace mixsim
