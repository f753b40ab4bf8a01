#include "mixsim/data/eval_sets.hpp"

#include <algorithm>
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

TokenSet build_eval_set(std::span<const Document* const> documents, const EvalLimits& limits,
                        const Tokenizer& tokenizer, Rng rng) {
  TokenSet set;
  for (std::size_t i : sample_documents(documents.size(), limits.max_docs, rng))
    if (!set.append(tokenizer, *documents[i], limits.max_tokens)) break;
  return set;
}

}  // namespace mixsim
