// Unit cutting arithmetic: k = floor(N / B) units (at least 1, at most one per document), cut at
// document boundaries as near to j*N/k as possible; one small unit records its upsampling factor.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "mixsim/data/units.hpp"

using namespace mixsim;

namespace {
std::uint64_t total(const std::vector<UnitCut>& cuts) {
  std::uint64_t t = 0;
  for (const auto& c : cuts) t += c.tokens;
  return t;
}
void expect_contiguous(const std::vector<UnitCut>& cuts, std::size_t docs) {
  ASSERT_FALSE(cuts.empty());
  EXPECT_EQ(cuts.front().first_doc, 0u);
  EXPECT_EQ(cuts.back().end_doc, docs);
  for (std::size_t j = 0; j < cuts.size(); ++j) {
    EXPECT_LT(cuts[j].first_doc, cuts[j].end_doc);
    if (j > 0) {
      EXPECT_EQ(cuts[j].first_doc, cuts[j - 1].end_doc);
    }
  }
}
}  // namespace

TEST(Units, SmallPartitionIsOneUpsampledUnit) {
  const std::vector<std::uint64_t> docs{100, 200, 50};  // N = 350 < B = 1000
  const auto cuts = cut_units(docs, 1000);
  ASSERT_EQ(cuts.size(), 1u);
  expect_contiguous(cuts, docs.size());
  EXPECT_EQ(cuts[0].tokens, 350u);
  EXPECT_DOUBLE_EQ(cuts[0].upsample, 1000.0 / 350.0);
}

TEST(Units, BetweenOneAndTwoBudgetsIsOneUnitNotUpsampled) {
  const std::vector<std::uint64_t> docs(19, 100);  // N = 1900, B = 1000: k = 1
  const auto cuts = cut_units(docs, 1000);
  ASSERT_EQ(cuts.size(), 1u);
  EXPECT_EQ(cuts[0].tokens, 1900u);
  EXPECT_DOUBLE_EQ(cuts[0].upsample, 1.0);
}

TEST(Units, EqualDocumentsCutExactly) {
  const std::vector<std::uint64_t> docs(40, 100);  // N = 4000, B = 1000: 4 units of 10 docs
  const auto cuts = cut_units(docs, 1000);
  ASSERT_EQ(cuts.size(), 4u);
  expect_contiguous(cuts, docs.size());
  for (const auto& c : cuts) {
    EXPECT_EQ(c.tokens, 1000u);
    EXPECT_EQ(c.end_doc - c.first_doc, 10u);
    EXPECT_DOUBLE_EQ(c.upsample, 1.0);
  }
}

TEST(Units, CutsGoToTheNearestBoundaryAndKeepEveryToken) {
  // N = 3500, B = 1000: k = 3, targets 1166.7 and 2333.3.
  const std::vector<std::uint64_t> docs{300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 500};
  // prefix: 300 600 900 1200 1500 1800 2100 2400 2700 3000 3500
  const auto cuts = cut_units(docs, 1000);
  ASSERT_EQ(cuts.size(), 3u);
  expect_contiguous(cuts, docs.size());
  EXPECT_EQ(cuts[0].end_doc, 4u);  // 1200 is nearest to 1166.7 (900 is 266.7 away)
  EXPECT_EQ(cuts[1].end_doc, 8u);  // 2400 is nearest to 2333.3 (2100 is 233.3 away)
  EXPECT_EQ(total(cuts), 3500u);
  for (const auto& c : cuts) EXPECT_GE(c.tokens, 1000u);
}

TEST(Units, TieGoesToTheEarlierBoundary) {
  const std::vector<std::uint64_t> docs{100, 200, 100, 200};  // N = 600, B = 300: k = 2, target 300
  const auto cuts = cut_units(docs, 300);                     // prefix 100 300 400 600: exact
  ASSERT_EQ(cuts.size(), 2u);
  EXPECT_EQ(cuts[0].end_doc, 2u);
  const std::vector<std::uint64_t> tie{200, 200, 200, 200, 200, 200};  // N = 1200, B = 400: k = 3
  const auto c3 = cut_units(tie, 400);
  ASSERT_EQ(c3.size(), 3u);
  EXPECT_EQ(c3[0].end_doc, 2u);
  EXPECT_EQ(c3[1].end_doc, 4u);
}

TEST(Units, NoMoreUnitsThanDocumentsAndEveryUnitNonEmpty) {
  const std::vector<std::uint64_t> docs{5000, 10, 10};  // N = 5020, B = 100: k = min(50, 3) = 3
  const auto cuts = cut_units(docs, 100);
  ASSERT_EQ(cuts.size(), 3u);
  expect_contiguous(cuts, docs.size());
  EXPECT_EQ(cuts[0].tokens, 5000u);
  EXPECT_EQ(cuts[2].tokens, 10u);
  EXPECT_DOUBLE_EQ(cuts[2].upsample, 10.0);  // a unit below the budget records its factor
}

TEST(Units, BalancedWithinOneDocumentOfTheMean) {
  std::vector<std::uint64_t> docs;
  for (int i = 0; i < 500; ++i) docs.push_back(50 + static_cast<std::uint64_t>((i * 37) % 200));
  const std::uint64_t n = std::accumulate(docs.begin(), docs.end(), std::uint64_t{0});
  const std::uint64_t budget = 10000;
  const auto cuts = cut_units(docs, budget);
  ASSERT_EQ(cuts.size(), n / budget);
  expect_contiguous(cuts, docs.size());
  EXPECT_EQ(total(cuts), n);
  // Each cut is within half a document of its target, so a unit is within one largest document
  // (249 tokens) of the mean N/k.
  const double mean = static_cast<double>(n) / static_cast<double>(cuts.size());
  for (const auto& c : cuts) EXPECT_NEAR(static_cast<double>(c.tokens), mean, 249.0);
}

TEST(Units, EmptyInputHasNoUnitsAndNamesAreNewsSlashIndex) {
  EXPECT_TRUE(cut_units(std::vector<std::uint64_t>{}, 100).empty());
  EXPECT_EQ(unit_name("news", 0), "news/0");
  EXPECT_EQ(unit_name("belles_lettres", 12), "belles_lettres/12");
}
