// The mixture space of merge-eval: sizes, explicit lists, samples, all subsets, the safety limit.
#include <gtest/gtest.h>

#include <set>

#include "mixsim/core/error.hpp"
#include "mixsim/stages/mixtures.hpp"

using namespace mixsim;

namespace {

const std::vector<std::string> kUnits{"a/0", "a/1", "b/0", "c/0"};
const std::vector<bool> kAll(4, true);

std::vector<std::string> names(const std::vector<Mixture>& space) {
  std::vector<std::string> out;
  for (const auto& m : space) out.push_back(mixture_name(m, kUnits));
  return out;
}

}  // namespace

TEST(MergeMixtures, SizesAcceptNumbersAndRanges) {
  EXPECT_EQ(parse_sizes({"2-3", "5", "3"}, "merge.sizes"), (std::vector<int>{2, 3, 5}));
  EXPECT_EQ(parse_sizes({}, "merge.sizes"), std::vector<int>{});
  for (const char* bad : {"0", "3-2", "x", "2-", "-2", "1.5"})
    EXPECT_THROW(parse_sizes({bad}, "merge.sizes"), UsageError) << bad;
}

TEST(MergeMixtures, BinomialIsExactAndSaturates) {
  EXPECT_EQ(binomial(19, 2), 171u);
  EXPECT_EQ(binomial(5, 0), 1u);
  EXPECT_EQ(binomial(3, 4), 0u);
  EXPECT_EQ(binomial(60, 30), 118264581564861424ull);
  EXPECT_EQ(binomial(200, 100), std::numeric_limits<std::uint64_t>::max());
}

TEST(MergeMixtures, ParsedMixturesAreSortedInUnitOrder) {
  EXPECT_EQ(parse_mixture("c/0+a/0", kUnits, "x"), (Mixture{0, 3}));
  EXPECT_EQ(mixture_name(Mixture{0, 3}, kUnits), "a/0+c/0");
  EXPECT_THROW(parse_mixture("a/0+z/9", kUnits, "x"), UsageError);
  EXPECT_THROW(parse_mixture("a/0+a/0", kUnits, "x"), UsageError);
  EXPECT_THROW(parse_mixture("+", kUnits, "x"), UsageError);
}

TEST(MergeMixtures, AllMixturesOfASizeInLexicographicOrderAfterTheExplicitOnes) {
  MergeConfig m;
  m.mixtures = {"c/0+b/0"};
  m.sizes = {"2"};
  EXPECT_EQ(names(mixture_space(m, kUnits, kAll, 1)),
            (std::vector<std::string>{"b/0+c/0", "a/0+a/1", "a/0+b/0", "a/0+c/0", "a/1+b/0",
                                      "a/1+c/0"}));  // b/0+c/0 is not repeated
}

TEST(MergeMixtures, AllSubsetsAndUnusableUnits) {
  MergeConfig m;
  m.all_subsets = true;
  EXPECT_EQ(mixture_space(m, kUnits, kAll, 1).size(), 15u);  // 2^4 - 1
  // Without a pool model for a/1, only subsets of the other three, and explicit mixtures that
  // name a/1 are left out.
  m.mixtures = {"a/1+b/0"};
  const auto space = mixture_space(m, kUnits, {true, false, true, true}, 1);
  EXPECT_EQ(space.size(), 7u);
  for (const auto& mix : space) EXPECT_EQ(std::count(mix.begin(), mix.end(), 1u), 0);
}

TEST(MergeMixtures, TheSafetyLimitNamesTheOption) {
  MergeConfig m;
  m.all_subsets = true;
  m.max_mixtures = 10;
  try {
    mixture_space(m, kUnits, kAll, 1);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--merge.all_subsets"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--merge.max_mixtures"), std::string::npos) << e.what();
  }
  m.all_subsets = false;
  m.sizes = {"1-4"};  // 4 + 6 + 4 + 1 = 15
  EXPECT_THROW(mixture_space(m, kUnits, kAll, 1), UsageError);
  m.sizes = {"5"};
  EXPECT_THROW(mixture_space(m, kUnits, kAll, 1), UsageError);  // larger than the units
}

TEST(MergeMixtures, TheSampleIsSeededDistinctAndOfTheAskedSizes) {
  MergeConfig m;
  m.sample = 5;
  m.sample_sizes = {"2", "3"};
  const auto a = mixture_space(m, kUnits, kAll, 7);
  EXPECT_EQ(a, mixture_space(m, kUnits, kAll, 7));
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(std::set<Mixture>(a.begin(), a.end()).size(), 5u);
  std::set<std::size_t> sizes;
  for (const auto& mix : a) sizes.insert(mix.size());
  EXPECT_EQ(sizes, (std::set<std::size_t>{2, 3}));
  // An explicit sample seed replaces run.seed.
  m.sample_seed = 99;
  EXPECT_EQ(mixture_space(m, kUnits, kAll, 7), mixture_space(m, kUnits, kAll, 8));
  // 6 pairs + 4 triples exist; 11 cannot be drawn.
  m.sample = 11;
  EXPECT_THROW(mixture_space(m, kUnits, kAll, 7), UsageError);
  m.sample = 10;
  EXPECT_EQ(mixture_space(m, kUnits, kAll, 7).size(), 10u);
}
