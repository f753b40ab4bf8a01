#include "mixsim/data/token_set.hpp"

#include <algorithm>
#include <span>

namespace mixsim {

bool TokenSet::append(const Tokenizer& tokenizer, const Document& document,
                      std::uint64_t max_tokens) {
  if (tokens.size() >= max_tokens) return false;
  const std::size_t start = tokens.size();
  tokens.push_back(static_cast<Token>(tokenizer.info().eot));
  tokenizer.encode(document.text, tokens);
  if (tokens.size() > max_tokens) {
    tokens.resize(static_cast<std::size_t>(max_tokens));
    truncated = true;
  }
  bytes += tokenizer.count_bytes(std::span<const Token>(tokens).subspan(start));
  documents.push_back(document.source);
  return true;
}

}  // namespace mixsim
