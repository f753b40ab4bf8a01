// A token array with its provenance: what a base unit, an eval set and the seed corpus are made
// of. Every document is stored as the end-of-text token followed by its tokens, so documents are
// separated and the first text byte of each one is predicted from a fresh start.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "mixsim/data/corpus.hpp"
#include "mixsim/data/tokenizer.hpp"

namespace mixsim {

struct TokenSet {
  std::vector<Token> tokens;           // EOT d1 EOT d2 ... (d = a document's tokens)
  std::vector<std::string> documents;  // the documents' sources, in order
  std::uint64_t bytes = 0;             // text bytes the tokens stand for (EOT counts none)
  bool truncated = false;              // the last document was cut at the token limit

  // Appends EOT + the document's tokens, cut so that tokens.size() <= max_tokens. Returns false
  // (and appends nothing) when the set is already full.
  bool append(const Tokenizer& tokenizer, const Document& document,
              std::uint64_t max_tokens = std::numeric_limits<std::uint64_t>::max());
};

}  // namespace mixsim
