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
  // Over max_tokens: true ("spread") gives every document an equal share (its beginning; a
  // document shorter than the share gives all of it and its rest goes to the others), false
  // ("prefix") appends whole documents in order and cuts the last one.
  bool spread = true;
};

// Indices of the documents to keep out of `count`: all when count <= max_docs, else a uniform
// sample of max_docs drawn with `rng`. Increasing, so the documents keep their order.
std::vector<std::size_t> sample_documents(std::size_t count, std::uint64_t max_docs, Rng rng);

// The eval set of `documents` (already in their stored order): the sample, cut to max_tokens as
// EvalLimits::spread says. Each document enters as EOT + its tokens (the EOT counts).
TokenSet build_eval_set(std::span<const Document* const> documents, const EvalLimits& limits,
                        const Tokenizer& tokenizer, Rng rng);

}  // namespace mixsim
