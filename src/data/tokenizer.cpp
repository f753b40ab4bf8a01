#include "mixsim/data/tokenizer.hpp"

#include "mixsim/core/error.hpp"

namespace mixsim {

std::uint64_t Tokenizer::count_bytes(std::span<const Token> tokens) const {
  std::uint64_t bytes = 0;
  for (Token t : tokens) bytes += token_bytes(t);
  return bytes;
}

void ByteTokenizer::encode(std::string_view text, std::vector<Token>& out) const {
  out.reserve(out.size() + text.size());
  for (char c : text) out.push_back(static_cast<unsigned char>(c));
}

std::string ByteTokenizer::decode(std::span<const Token> tokens, std::string_view eot_text) const {
  std::string text;
  text.reserve(tokens.size());
  for (Token t : tokens) {
    if (t == kEot) {
      text += eot_text;
    } else {
      MIXSIM_CHECK(t < kEot, "byte tokenizer: token id {} is outside the vocabulary", t);
      text.push_back(static_cast<char>(t));
    }
  }
  return text;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& kind) {
  if (kind == "byte") return std::make_unique<ByteTokenizer>();
  usage_fail("unknown tokenizer '{}' (known: byte)", kind);
}

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerInfo& info) {
  if (info.kind == "byte") {
    auto tokenizer = std::make_unique<ByteTokenizer>();
    if (!(tokenizer->info() == info))
      fail("tokenizer 'byte' with vocab_size {} and eot {} does not match this build's (257, 256)",
           info.vocab_size, info.eot);
    return tokenizer;
  }
  fail("this build of mixsim does not know tokenizer '{}' (known: byte)", info.kind);
}

}  // namespace mixsim
