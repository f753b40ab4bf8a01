// The byte-level tokenizer: every byte string round-trips, the vocabulary and end-of-text token
// are as data.h5 describes them, and the factory rebuilds it from that description.
#include <gtest/gtest.h>

#include "mixsim/core/error.hpp"
#include "mixsim/data/tokenizer.hpp"

using namespace mixsim;

TEST(ByteTokenizer, RoundTripsTextIncludingInvalidUtf8AndEveryByte) {
  ByteTokenizer tok;
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  for (const std::string& text :
       {std::string("The Fulton County Grand Jury said Friday."), std::string("grüße — ünïcode ✓"),
        std::string("\xff\xfe broken \xc3 utf-8 \x80"), all_bytes, std::string()}) {
    const auto tokens = tok.encode(text);
    ASSERT_EQ(tokens.size(), text.size());  // one token per byte
    EXPECT_EQ(tok.decode(tokens), text);
    EXPECT_EQ(tok.count_bytes(tokens), text.size());
  }
}

TEST(ByteTokenizer, TokenIsTheByteValueAndEotIs256) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.encode("A\xff"), (std::vector<Token>{65, 255}));
  const TokenizerInfo info = tok.info();
  EXPECT_EQ(info.kind, "byte");
  EXPECT_EQ(info.vocab_size, 257u);
  EXPECT_EQ(info.eot, 256u);
  EXPECT_EQ(tok.token_bytes(256), 0u);
  EXPECT_EQ(tok.token_bytes(0), 1u);
}

TEST(ByteTokenizer, DecodeRendersEndOfTextAsAsked) {
  ByteTokenizer tok;
  const std::vector<Token> tokens{256, 'h', 'i', 256, 'y', 'o'};
  EXPECT_EQ(tok.decode(tokens), "hiyo");
  EXPECT_EQ(tok.decode(tokens, "|"), "|hi|yo");
  EXPECT_EQ(tok.count_bytes(tokens), 4u);
}

TEST(ByteTokenizer, DecodeRejectsIdsOutsideTheVocabulary) {
  ByteTokenizer tok;
  EXPECT_THROW(tok.decode(std::vector<Token>{300}), Error);
}

TEST(TokenizerFactory, BuildsFromKindAndFromFileDescription) {
  auto tok = make_tokenizer("byte");
  EXPECT_EQ(tok->info().vocab_size, 257u);
  EXPECT_EQ(make_tokenizer(tok->info())->info(), tok->info());
  EXPECT_THROW(make_tokenizer("bpe-50k"), UsageError);
  EXPECT_THROW(make_tokenizer(TokenizerInfo{"bpe", 50257, 50256}), Error);
  EXPECT_THROW(make_tokenizer(TokenizerInfo{"byte", 300, 256}), Error);  // a mismatched description
}
