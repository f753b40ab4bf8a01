#include "mixsim/stages/stats.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "mixsim/core/error.hpp"
#include "mixsim/core/rng.hpp"

namespace mixsim::stats {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

int sign(double v) {
  return (v > 0) - (v < 0);
}

}  // namespace

double pearson(Sample x, Sample y) {
  MIXSIM_CHECK(x.size() == y.size(), "pearson: {} vs {} values", x.size(), y.size());
  const std::size_t n = x.size();
  if (n < 2) return kNaN;
  const double mx = std::accumulate(x.begin(), x.end(), 0.0) / double(n);
  const double my = std::accumulate(y.begin(), y.end(), 0.0) / double(n);
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double dx = x[i] - mx, dy = y[i] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx <= 0 || syy <= 0) return kNaN;
  return std::clamp(sxy / std::sqrt(sxx * syy), -1.0, 1.0);
}

std::vector<double> ranks(Sample x) {
  std::vector<std::size_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
  std::vector<double> r(x.size());
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j + 1 < order.size() && x[order[j + 1]] == x[order[i]]) ++j;
    const double mean_rank = (double(i) + double(j)) / 2.0 + 1.0;  // ranks i+1 .. j+1
    for (std::size_t k = i; k <= j; ++k) r[order[k]] = mean_rank;
    i = j + 1;
  }
  return r;
}

double spearman(Sample x, Sample y) {
  const auto rx = ranks(x), ry = ranks(y);
  return pearson(rx, ry);
}

double kendall_tau_b(Sample x, Sample y) {
  MIXSIM_CHECK(x.size() == y.size(), "kendall: {} vs {} values", x.size(), y.size());
  const std::size_t n = x.size();
  // O(n^2): the report's samples are the mixtures that have a truth model (tens to hundreds).
  double concordant_minus_discordant = 0, tied_x = 0, tied_y = 0;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j) {
      const int sx = sign(x[i] - x[j]), sy = sign(y[i] - y[j]);
      tied_x += sx == 0;
      tied_y += sy == 0;
      concordant_minus_discordant += sx * sy;
    }
  const double n0 = double(n) * double(n - (n > 0)) / 2.0;
  const double denom = std::sqrt((n0 - tied_x) * (n0 - tied_y));
  return denom > 0 ? concordant_minus_discordant / denom : kNaN;
}

Decisions decision_accuracy(Sample x, Sample y) {
  MIXSIM_CHECK(x.size() == y.size(), "decisions: {} vs {} values", x.size(), y.size());
  Decisions d;
  for (std::size_t i = 0; i < x.size(); ++i)
    for (std::size_t j = i + 1; j < x.size(); ++j) {
      const int sy = sign(y[i] - y[j]);
      if (sy == 0) continue;
      ++d.pairs;
      const int sx = sign(x[i] - x[j]);
      d.agreeing += sx == sy ? 1.0 : sx == 0 ? 0.5 : 0.0;
    }
  d.accuracy = d.pairs ? d.agreeing / double(d.pairs) : kNaN;
  return d;
}

double quantile(std::vector<double>& values, double q) {
  MIXSIM_CHECK(!values.empty() && q >= 0 && q <= 1, "quantile {} of {} values", q, values.size());
  std::sort(values.begin(), values.end());
  const double pos = q * double(values.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const auto hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (pos - double(lo)) * (values[hi] - values[lo]);
}

Interval bootstrap(Sample x, Sample y, const Statistic& statistic, int resamples,
                   std::uint64_t seed, double level) {
  MIXSIM_CHECK(x.size() == y.size(), "bootstrap: {} vs {} values", x.size(), y.size());
  const std::size_t n = x.size();
  if (n == 0 || resamples < 1) return {kNaN, kNaN};
  Rng rng(seed);
  std::vector<double> bx(n), by(n), values;
  values.reserve(static_cast<std::size_t>(resamples));
  for (int b = 0; b < resamples; ++b) {
    for (std::size_t i = 0; i < n; ++i) {
      const auto k = rng.below(n);
      bx[i] = x[k];
      by[i] = y[k];
    }
    const double v = statistic(bx, by);
    if (std::isfinite(v)) values.push_back(v);
  }
  if (2 * values.size() < static_cast<std::size_t>(resamples)) return {kNaN, kNaN};
  const double tail = (1.0 - level) / 2.0;
  return {quantile(values, tail), quantile(values, 1.0 - tail)};
}

}  // namespace mixsim::stats
