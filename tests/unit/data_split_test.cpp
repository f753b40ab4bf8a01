// Hash splits: a document's split depends on its content and the salt only, so adding documents
// never moves others; the fractions come out as configured.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "mixsim/data/split.hpp"

using namespace mixsim;

namespace {
std::string doc(int i) {
  return "document number " + std::to_string(i) + " with some text";
}
}  // namespace

TEST(Split, AddingDocumentsNeverMovesOthers) {
  const SplitFractions f{0.05, 0.05};
  std::vector<Split> before;
  for (int i = 0; i < 2000; ++i) before.push_back(assign_split("salt", doc(i), f));
  // A bigger corpus, new documents interleaved with the old: the old keep their split.
  for (int i = 0; i < 4000; ++i) {
    const Split s = assign_split("salt", doc(i), f);
    if (i < 2000) {
      ASSERT_EQ(s, before[static_cast<std::size_t>(i)]) << "document " << i << " moved";
    }
  }
}

TEST(Split, FractionsAreAsConfigured) {
  const SplitFractions f{0.1, 0.05};
  const int n = 20000;
  int valid = 0, test = 0;
  for (int i = 0; i < n; ++i) {
    const Split s = assign_split("mixsim", doc(i), f);
    valid += s == Split::valid;
    test += s == Split::test;
  }
  // Binomial: sd(valid) = sqrt(n p (1-p)) = 42, sd(test) = 31; 5 sd bounds never fail by chance.
  EXPECT_NEAR(valid, 0.1 * n, 5 * 42);
  EXPECT_NEAR(test, 0.05 * n, 5 * 31);
}

TEST(Split, SaltChangesTheSplitAndIdenticalTextsStayTogether) {
  const SplitFractions f{0.3, 0.3};
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    differ += assign_split("a", doc(i), f) != assign_split("b", doc(i), f);
    EXPECT_EQ(assign_split("a", doc(i), f), assign_split("a", doc(i), f));
  }
  // With p(same split) = 0.3^2 + 0.3^2 + 0.4^2 = 0.34, about 132 of 200 differ.
  EXPECT_GT(differ, 80);
}

TEST(Split, HashIsStableAcrossBuilds) {
  // Part of the data format: a change here moves documents between splits in every corpus.
  EXPECT_EQ(content_hash("mixsim", "hello"), content_hash("mixsim", "hello"));
  EXPECT_NE(content_hash("mixsim", "hello"), content_hash("mixsi", "mhello"));
  EXPECT_EQ(content_hash("mixsim", "The jury said."), 0x0280ee7e4535b59dULL)
      << std::hex << content_hash("mixsim", "The jury said.");
}

TEST(Split, ZeroFractionsPutEverythingInTrain) {
  for (int i = 0; i < 100; ++i) EXPECT_EQ(assign_split("s", doc(i), {0.0, 0.0}), Split::train);
  EXPECT_STREQ(split_name(Split::valid), "valid");
}
