// The statistics of the report: how well a proxy's losses predict the truth's across mixtures.
// Correlations (Pearson, Spearman, Kendall tau-b, all handling ties), percentile-bootstrap
// intervals and pairwise decision accuracy. Pure functions over paired samples x (proxy), y
// (truth).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace mixsim::stats {

using Sample = std::span<const double>;

// Pearson's r. NaN when n < 2 or either sample is constant.
double pearson(Sample x, Sample y);

// 1-based ranks; tied values share the mean of the ranks they span.
std::vector<double> ranks(Sample x);

// Spearman's rho: Pearson's r of the ranks (ties get mean ranks).
double spearman(Sample x, Sample y);

// Kendall's tau-b: (C - D) / sqrt((n0 - n1)(n0 - n2)) with n0 = n(n-1)/2 pairs, n1 and n2 the
// pairs tied in x and in y. NaN when either sample is constant.
double kendall_tau_b(Sample x, Sample y);

// Over the pairs of mixtures whose truth losses differ: the fraction the proxy orders the same way
// (a pair the proxy ties counts one half). NaN when there is no such pair.
struct Decisions {
  double accuracy = 0;
  double agreeing = 0;    // agreeing pairs, ties counting 1/2
  std::size_t pairs = 0;  // pairs with different truth losses
};
Decisions decision_accuracy(Sample x, Sample y);

struct Interval {
  double lo = 0, hi = 0;
};

using Statistic = std::function<double(Sample, Sample)>;

// The percentile bootstrap interval of `statistic`: `resamples` resamples of the n pairs drawn
// with replacement from Rng(seed), the statistic of each, and the (1-level)/2 and (1+level)/2
// quantiles (linear interpolation) of the finite values. Resamples where the statistic is
// undefined (e.g. all pairs the same) are skipped; NaN bounds when fewer than half are finite.
Interval bootstrap(Sample x, Sample y, const Statistic& statistic, int resamples,
                   std::uint64_t seed, double level = 0.95);

// The q-quantile (0 <= q <= 1) of `values` by linear interpolation between order statistics
// (type 7, as numpy's default). `values` is sorted in place.
double quantile(std::vector<double>& values, double q);

}  // namespace mixsim::stats
