#include "mixsim/data/eval_sets.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

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

// Shares of `budget` tokens over documents of `lengths` tokens, each as equal as the lengths
// allow: every document gets min(length, c) for the largest cap c that fits, and the few tokens
// left under the next cap go one each to the first documents still longer than their share.
// The shares add up to min(budget, sum of lengths).
std::vector<std::uint64_t> equal_shares(const std::vector<std::uint64_t>& lengths,
                                        std::uint64_t budget) {
  std::vector<std::uint64_t> shares(lengths.size(), 0);
  std::vector<std::size_t> open(lengths.size());  // documents longer than their share, in order
  std::iota(open.begin(), open.end(), std::size_t{0});
  std::uint64_t left = budget;
  while (left > 0 && !open.empty()) {
    const std::uint64_t each = left / open.size();
    if (each == 0) {  // fewer tokens left than open documents
      for (std::size_t i = 0; i < left; ++i) ++shares[open[i]];
      break;
    }
    std::vector<std::size_t> still_open;
    for (std::size_t i : open) {
      const std::uint64_t take = std::min(each, lengths[i] - shares[i]);
      shares[i] += take;
      left -= take;
      if (shares[i] < lengths[i]) still_open.push_back(i);
    }
    open.swap(still_open);
  }
  return shares;
}

}  // namespace

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
  // share of at least kMinShare tokens (or all of itself), then the shares are as equal as the
  // lengths allow, and the chosen documents are stored in their order.
  Rng order_rng = rng.split(1);
  for (std::size_t i = keep.size(); i > 1; --i)
    std::swap(keep[i - 1], keep[order_rng.below(i)]);
  std::vector<std::uint64_t> lengths;  // EOT + the document's tokens, in the random order
  std::vector<Token> scratch;
  std::vector<std::size_t> chosen;
  for (std::size_t i : keep) {
    scratch.clear();
    tokenizer.encode(documents[i]->text, scratch);
    lengths.push_back(1 + scratch.size());
    if (chosen.size() >= 1 && share_cap(lengths, limits.max_tokens) < kMinShare) break;
    chosen.push_back(i);
  }
  lengths.resize(chosen.size());
  std::vector<std::size_t> order(chosen.size());  // stored order of the chosen documents
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return chosen[a] < chosen[b]; });
  std::vector<std::uint64_t> sorted_lengths;
  for (std::size_t j : order) sorted_lengths.push_back(lengths[j]);
  const std::vector<std::uint64_t> shares = equal_shares(sorted_lengths, limits.max_tokens);
  for (std::size_t j = 0; j < order.size(); ++j)
    if (shares[j] > 0)
      set.append(tokenizer, *documents[chosen[order[j]]], set.tokens.size() + shares[j]);
  return set;
}

}  // namespace mixsim
