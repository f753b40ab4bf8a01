// Text to tokens and back. The stages see only the Tokenizer interface; the byte-level tokenizer
// is the one built in (a token is a byte, so bits per byte are exact), a BPE can be added beside
// it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mixsim {

using Token = std::uint16_t;  // every tokenizer's vocabulary fits 16 bits (data.h5 stores uint16)

// What a data file records about its tokenizer: enough to rebuild it with make_tokenizer().
struct TokenizerInfo {
  std::string kind;          // "byte"
  std::uint32_t vocab_size;  // V: number of distinct token ids
  std::uint32_t eot;         // the end-of-text token, placed before every document
  bool operator==(const TokenizerInfo&) const = default;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual TokenizerInfo info() const = 0;
  // Appends the tokens of `text` (no end-of-text token) to `out`.
  virtual void encode(std::string_view text, std::vector<Token>& out) const = 0;
  // The text of `tokens`; end-of-text tokens become `eot_text`.
  virtual std::string decode(std::span<const Token> tokens,
                             std::string_view eot_text = "") const = 0;
  // How many bytes of text a token stands for (0 for end-of-text): bits per byte need it.
  virtual std::size_t token_bytes(Token token) const = 0;

  std::vector<Token> encode(std::string_view text) const {
    std::vector<Token> out;
    encode(text, out);
    return out;
  }
  std::uint64_t count_bytes(std::span<const Token> tokens) const;
};

// 256 byte tokens (token b is byte b) plus end-of-text = 256: V = 257. Any byte string round-trips,
// valid UTF-8 or not.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::uint32_t kEot = 256;
  static constexpr std::uint32_t kVocabSize = 257;
  using Tokenizer::encode;
  TokenizerInfo info() const override { return {"byte", kVocabSize, kEot}; }
  void encode(std::string_view text, std::vector<Token>& out) const override;
  std::string decode(std::span<const Token> tokens, std::string_view eot_text = "") const override;
  std::size_t token_bytes(Token token) const override { return token == kEot ? 0 : 1; }
};

// The tokenizer of a kind ("byte"); a UsageError lists the known kinds.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& kind);
// Rebuilds the tokenizer a file describes; an Error when this build does not know it.
std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerInfo& info);

}  // namespace mixsim
