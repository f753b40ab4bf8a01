// Eval sets: at most max_docs documents (a seeded sample, in their given order) and at most
// max_tokens tokens, cut as a prefix or spread over the documents; every document starts with
// the end-of-text token.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "mixsim/data/eval_sets.hpp"

using namespace mixsim;

namespace {
std::vector<Document> make_docs(int n, std::size_t length) {
  std::vector<Document> docs;
  for (int i = 0; i < n; ++i)
    docs.push_back({std::string(length, static_cast<char>('a' + i % 26)), fmt::format("d{}", i)});
  return docs;
}
std::vector<const Document*> ptrs(const std::vector<Document>& docs) {
  std::vector<const Document*> out;
  for (const auto& d : docs) out.push_back(&d);
  return out;
}
}  // namespace

TEST(EvalSets, SampleIsSeededSortedAndWithoutRepeats) {
  const auto a = sample_documents(1000, 50, Rng(7));
  const auto b = sample_documents(1000, 50, Rng(7));
  const auto c = sample_documents(1000, 50, Rng(8));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  ASSERT_EQ(a.size(), 50u);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(std::set<std::size_t>(a.begin(), a.end()).size(), 50u);
  EXPECT_LT(a.back(), 1000u);
  EXPECT_EQ(sample_documents(10, 50, Rng(7)).size(), 10u);  // fewer than the limit: all
}

TEST(EvalSets, SampleCoversTheWholeRange) {
  // A uniform sample of 500 out of 1000 has about 250 below 500 (sd 11): 6 sd bounds.
  const auto s = sample_documents(1000, 500, Rng(3));
  const auto below = std::count_if(s.begin(), s.end(), [](std::size_t i) { return i < 500; });
  EXPECT_NEAR(static_cast<double>(below), 250.0, 66.0);
}

TEST(EvalSets, DocumentAndTokenLimits) {
  ByteTokenizer tok;
  const auto docs = make_docs(30, 99);  // 100 tokens each with the end-of-text token
  const auto p = ptrs(docs);
  const TokenSet all = build_eval_set(p, {100, 1000000}, tok, Rng(1));
  EXPECT_EQ(all.documents.size(), 30u);
  EXPECT_EQ(all.tokens.size(), 3000u);
  EXPECT_EQ(all.bytes, 30u * 99u);
  EXPECT_FALSE(all.truncated);
  EXPECT_EQ(all.documents.front(), "d0");  // order kept

  const TokenSet few = build_eval_set(p, {10, 1000000}, tok, Rng(1));
  EXPECT_EQ(few.documents.size(), 10u);

  const TokenSet cut = build_eval_set(p, {100, 250, /*spread=*/false}, tok, Rng(1));
  EXPECT_EQ(cut.tokens.size(), 250u);
  EXPECT_EQ(cut.documents.size(), 3u);  // two whole documents and half of the third
  EXPECT_TRUE(cut.truncated);
  EXPECT_EQ(cut.bytes, 99u + 99u + 49u);
  for (std::size_t i : {0u, 100u, 200u}) EXPECT_EQ(cut.tokens[i], 256) << i;
}

TEST(EvalSets, SpreadGivesEveryDocumentAnEqualShare) {
  ByteTokenizer tok;
  auto docs_of = [](std::initializer_list<std::size_t> lengths) {
    std::vector<Document> docs;
    for (std::size_t len : lengths)
      docs.push_back({std::string(len, 'x'), fmt::format("d{}", docs.size())});
    return docs;
  };
  // 100, 2000, 600 and 3000 tokens with the end-of-text token; 2600 to share: 650 each, but d0
  // has only 100 and d2 600, so the 600 left go 300 and 300 to d1 and d3: 100 + 950 + 600 + 950.
  const auto docs = docs_of({99, 1999, 599, 2999});
  const TokenSet set = build_eval_set(ptrs(docs), {100, 2600}, tok, Rng(1));
  ASSERT_EQ(set.tokens.size(), 2600u);
  EXPECT_EQ(set.documents, (std::vector<std::string>{"d0", "d1", "d2", "d3"}));  // stored order
  for (std::size_t start : {0u, 100u, 1050u, 1650u}) EXPECT_EQ(set.tokens[start], 256) << start;
  EXPECT_EQ(std::count(set.tokens.begin(), set.tokens.end(), 256), 4);
  EXPECT_EQ(set.bytes, 99u + 949u + 599u + 949u);
  EXPECT_TRUE(set.truncated);

  // The same budget as a prefix: d0 and d1 whole, then the first 500 tokens of d2.
  const TokenSet prefix = build_eval_set(ptrs(docs), {100, 2600, false}, tok, Rng(1));
  EXPECT_EQ(prefix.documents, (std::vector<std::string>{"d0", "d1", "d2"}));
  EXPECT_EQ(prefix.tokens[2100], 256);

  // Shares stay >= 512 tokens: of four 1500-token documents, 2000 tokens go to three (667, 667,
  // 666), the seeded choice of which three being the same on every run.
  const auto equal = docs_of({1499, 1499, 1499, 1499});
  const TokenSet three = build_eval_set(ptrs(equal), {100, 2000}, tok, Rng(5));
  EXPECT_EQ(three.tokens.size(), 2000u);
  EXPECT_EQ(three.documents.size(), 3u);
  EXPECT_TRUE(std::is_sorted(three.documents.begin(), three.documents.end()));
  EXPECT_EQ(build_eval_set(ptrs(equal), {100, 2000}, tok, Rng(5)).documents, three.documents);
  // ... and a budget under the minimum share goes to one document.
  EXPECT_EQ(build_eval_set(ptrs(equal), {100, 300}, tok, Rng(5)).documents.size(), 1u);

  // A budget that holds everything: every document whole, nothing cut.
  const TokenSet all = build_eval_set(ptrs(docs), {100, 10000}, tok, Rng(1));
  EXPECT_EQ(all.tokens.size(), 5700u);
  EXPECT_FALSE(all.truncated);
}
