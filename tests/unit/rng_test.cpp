#include "mixsim/core/rng.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

using mixsim::Rng;

TEST(Rng, SameSeedSameSequence) {
  Rng a(42), b(42);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.next_u64(), b.next_u64());
}

TEST(Rng, DifferentSeedsDiffer) {
  Rng a(1), b(2);
  int equal = 0;
  for (int i = 0; i < 1000; ++i) equal += a.next_u64() == b.next_u64();
  EXPECT_EQ(equal, 0);
}

TEST(Rng, SplitDependsOnlyOnNameNotOnDraws) {
  Rng a(7), b(7);
  for (int i = 0; i < 123; ++i) b.next_u64();  // draws on the parent must not move the child
  Rng ca = a.split(5), cb = b.split(5);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(ca.next_u64(), cb.next_u64());
  Rng other = a.split(6);
  Rng ca2 = a.split(5);
  EXPECT_NE(other.next_u64(), ca2.next_u64());
}

TEST(Rng, NestedSplitsAreDistinct) {
  Rng root(9);
  EXPECT_NE(root.split(1).split(2).key(), root.split(2).split(1).key());
  EXPECT_NE(root.split(0).key(), root.key());
}

TEST(Rng, UniformMomentsAndRange) {
  Rng r(3);
  const int n = 200000;
  double sum = 0, sum2 = 0;
  for (int i = 0; i < n; ++i) {
    double u = r.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    sum2 += u * u;
  }
  // Mean 1/2, variance 1/12; the standard error of the mean is sqrt(1/12/n) ~ 6.5e-4, so 5e-3
  // is more than 7 standard errors.
  EXPECT_NEAR(sum / n, 0.5, 5e-3);
  EXPECT_NEAR(sum2 / n - (sum / n) * (sum / n), 1.0 / 12.0, 5e-3);
}

TEST(Rng, NormalMoments) {
  Rng r(11);
  const int n = 200000;
  double sum = 0, sum2 = 0;
  for (int i = 0; i < n; ++i) {
    double z = r.normal();
    sum += z;
    sum2 += z * z;
  }
  // Standard error of the mean: 1/sqrt(n) ~ 2.2e-3; of the variance ~ sqrt(2/n) ~ 3.2e-3.
  EXPECT_NEAR(sum / n, 0.0, 0.015);
  EXPECT_NEAR(sum2 / n, 1.0, 0.02);
}

TEST(Rng, BelowIsUniformOverSmallRange) {
  Rng r(5);
  std::vector<int> counts(7, 0);
  const int n = 70000;
  for (int i = 0; i < n; ++i) counts[r.below(7)]++;
  // Each count ~ Binomial(n, 1/7): sd ~ 92; 600 is > 6 sd.
  for (int c : counts) EXPECT_NEAR(c, n / 7, 600);
}

TEST(Rng, ShuffleIsAPermutationAndDeterministic) {
  std::vector<int> a(100), b(100);
  std::iota(a.begin(), a.end(), 0);
  b = a;
  Rng r1(13), r2(13);
  r1.shuffle(std::span<int>(a));
  r2.shuffle(std::span<int>(b));
  EXPECT_EQ(a, b);
  std::vector<int> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sorted[i], i);
  int fixed = 0;
  for (int i = 0; i < 100; ++i) fixed += a[i] == i;
  EXPECT_LT(fixed, 10);  // a shuffle that moved nothing would be no shuffle
}
