// Eval sets: held-out documents of a partition (its valid or test split) or an out-of-domain
// corpus, limited to at most max_docs documents (a seeded sample) and max_tokens tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "mixsim/core/rng.hpp"
#include "mixsim/data/corpus.hpp"
#include "mixsim/data/token_set.hpp"
#include "mixsim/data/tokenizer.hpp"

namespace mixsim {

struct EvalLimits {
  std::uint64_t max_docs = 1000;
  std::uint64_t max_tokens = 1000000;
};

// Indices of the documents to keep out of `count`: all when count <= max_docs, else a uniform
// sample of max_docs drawn with `rng`. Increasing, so the documents keep their order.
std::vector<std::size_t> sample_documents(std::size_t count, std::uint64_t max_docs, Rng rng);

// The eval set of `documents` (already in their stored order): the sample, then documents in
// order until max_tokens (the last one cut at the limit).
TokenSet build_eval_set(std::span<const Document* const> documents, const EvalLimits& limits,
                        const Tokenizer& tokenizer, Rng rng);

}  // namespace mixsim
