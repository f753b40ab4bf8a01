// The report's statistics against values computed by hand (the arithmetic is in the comments).
#include "mixsim/stages/stats.hpp"

#include <gtest/gtest.h>

#include <cmath>

using namespace mixsim;

namespace {

// x strictly increasing; y with two pairs of ties.
const std::vector<double> kX{1, 2, 3, 4, 5};
const std::vector<double> kY{2, 4, 5, 4, 5};

}  // namespace

// Every expected value below is a closed form of small integers; 1e-12 allows for the rounding
// of a handful of double operations.
constexpr double kTol = 1e-12;

TEST(Stats, Pearson) {
  // dx = -2 -1 0 1 2, dy = -2 0 1 0 1: sxy = 4 + 2 = 6, sxx = 10, syy = 6; r = 6 / sqrt(60)
  EXPECT_NEAR(stats::pearson(kX, kY), 6 / std::sqrt(60.0), kTol);
  EXPECT_NEAR(stats::pearson(kX, kX), 1.0, kTol);
  const std::vector<double> neg{10, 8, 6, 4, 2};
  EXPECT_NEAR(stats::pearson(kX, neg), -1.0, kTol);
  EXPECT_TRUE(std::isnan(stats::pearson(kX, std::vector<double>(5, 3.0))));  // constant
  EXPECT_TRUE(std::isnan(stats::pearson(std::vector<double>{1}, std::vector<double>{2})));
}

TEST(Stats, RanksShareTheMeanRankOfTies) {
  EXPECT_EQ(stats::ranks(kY), (std::vector<double>{1, 2.5, 4.5, 2.5, 4.5}));
  EXPECT_EQ(stats::ranks(std::vector<double>{30, 10, 20, 20}),
            (std::vector<double>{4, 1, 2.5, 2.5}));
}

TEST(Stats, SpearmanIsPearsonOfTheRanks) {
  // ranks of y: 1 2.5 4.5 2.5 4.5 (mean 3): d = -2 -0.5 1.5 -0.5 1.5; against dx = -2 -1 0 1 2:
  // sxy = 4 + 0.5 + 0 - 0.5 + 3 = 7, sxx = 10, syy = 4 + .25 + 2.25 + .25 + 2.25 = 9
  EXPECT_NEAR(stats::spearman(kX, kY), 7 / std::sqrt(90.0), kTol);
  // Monotone but not linear: Spearman 1, Pearson below 1.
  const std::vector<double> cube{1, 8, 27, 64, 125};
  EXPECT_NEAR(stats::spearman(kX, cube), 1.0, kTol);
  EXPECT_LT(stats::pearson(kX, cube), 0.99);
}

TEST(Stats, KendallTauBCountsTies) {
  // 10 pairs; x never ties. y pairs: (2,4) and (3,5) tie; (3,4) is discordant (5 > 4 while x
  // grows); the other 7 are concordant. tau-b = (7 - 1) / sqrt((10 - 0) * (10 - 2)).
  EXPECT_NEAR(stats::kendall_tau_b(kX, kY), 6 / std::sqrt(80.0), kTol);
  EXPECT_NEAR(stats::kendall_tau_b(kY, kX), 6 / std::sqrt(80.0), kTol);  // symmetric
  // Ties on both sides: x = 1 1 2 3, y = 1 2 2 3. Pairs: (1,2) x tie; (1,3) C; (1,4) C;
  // (2,3) y tie; (2,4) C; (3,4) C. tau-b = 4 / sqrt((6 - 1)(6 - 1)) = 0.8
  EXPECT_NEAR(
      stats::kendall_tau_b(std::vector<double>{1, 1, 2, 3}, std::vector<double>{1, 2, 2, 3}), 0.8,
      kTol);
  EXPECT_TRUE(std::isnan(stats::kendall_tau_b(kX, std::vector<double>(5, 1.0))));
}

TEST(Stats, DecisionAccuracyOverPairsWithDifferentTruth) {
  // Proxy kX, truth kY: 8 pairs where the truth differs, all ordered alike except (3,4).
  const auto d = stats::decision_accuracy(kX, kY);
  EXPECT_EQ(d.pairs, 8u);
  EXPECT_DOUBLE_EQ(d.accuracy, 7.0 / 8.0);
  // A pair the proxy ties counts one half: (1,2) tied in x; (1,3), (2,3) agree.
  const auto t =
      stats::decision_accuracy(std::vector<double>{1, 1, 2}, std::vector<double>{1, 2, 3});
  EXPECT_DOUBLE_EQ(t.accuracy, 2.5 / 3.0);
  EXPECT_TRUE(std::isnan(stats::decision_accuracy(kX, std::vector<double>(5, 0.0)).accuracy));
}

TEST(Stats, QuantileInterpolatesLikeNumpy) {
  std::vector<double> v{4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(stats::quantile(v, 0.25), 1.75);  // position 0.75 between 1 and 2
  EXPECT_DOUBLE_EQ(stats::quantile(v, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(stats::quantile(v, 1.0), 4.0);
  EXPECT_DOUBLE_EQ(stats::quantile(v, 0.5), 2.5);
}

TEST(Stats, BootstrapIsSeededAndBracketsTheEstimate) {
  std::vector<double> x, y;
  for (int i = 0; i < 30; ++i) {
    x.push_back(i);
    y.push_back(i + 6.0 * std::sin(i * 1.7));  // correlated with noise
  }
  const auto a = stats::bootstrap(x, y, stats::pearson, 500, 11);
  const auto b = stats::bootstrap(x, y, stats::pearson, 500, 11);
  const auto c = stats::bootstrap(x, y, stats::pearson, 500, 12);
  EXPECT_EQ(a.lo, b.lo);
  EXPECT_EQ(a.hi, b.hi);
  EXPECT_NE(a.lo, c.lo);
  const double r = stats::pearson(x, y);
  EXPECT_LT(a.lo, r);
  EXPECT_GT(a.hi, r);
  EXPECT_LE(a.hi, 1.0);
  // A perfect line: every defined resample has r = 1 (resamples of one repeated pair are
  // undefined and skipped).
  std::vector<double> line{3, 5, 7, 9};
  const auto p = stats::bootstrap(std::vector<double>{1, 2, 3, 4}, line, stats::pearson, 200, 3);
  EXPECT_NEAR(p.lo, 1.0, kTol);
  EXPECT_NEAR(p.hi, 1.0, kTol);
  // Too few pairs for any defined resample: no interval.
  const auto none =
      stats::bootstrap(std::vector<double>{1}, std::vector<double>{2}, stats::pearson, 50, 3);
  EXPECT_TRUE(std::isnan(none.lo));
}
