// `mixsim report`: what results.h5 says, for people. Per eval set the best mixtures by each
// proxy; where truth models exist, how well each proxy predicts them (Pearson, Spearman, Kendall
// with bootstrap intervals, pairwise decision accuracy), split by the eval set's relation to the
// mixture (own partition, other partition, out of domain); every number as CSV; SVG scatter plots.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "mixsim/core/config.hpp"
#include "mixsim/core/options.hpp"
#include "mixsim/dist/communicator.hpp"
#include "mixsim/io/results.hpp"
#include "mixsim/stages/stats.hpp"

namespace mixsim {

// How eval set e relates to mixture m: "ood" (out-of-domain set), "own" (the set is held out of a
// partition one of the mixture's units comes from) or "other".
std::string relation(const Results& results, std::size_t mixture, std::size_t eval_set);

// One proxy against the truth over a set of (mixture, eval set) pairs.
struct Correlation {
  std::string eval_set;  // "" in the summary over all eval sets
  std::string relation;  // all | own | other | ood
  std::string proxy;
  std::size_t n = 0;  // pairs with both a proxy and a truth loss
  double pearson = 0, spearman = 0, kendall = 0;
  stats::Interval pearson_ci, spearman_ci, kendall_ci;
  stats::Decisions decisions;   // pairs of mixtures on the same eval set
  double mean_set_pearson = 0;  // summary only: the mean of the per-set Pearson r (NaN if none)
};

// Per eval set (relation "all", plus "own" and "other" for partition sets) and, in the summary,
// pooled over the (mixture, eval set) pairs of each relation. Bootstrap streams are split from
// `seed` by eval set, relation and proxy, so every number is reproducible on its own.
std::vector<Correlation> correlations(const Results& results, int resamples, std::uint64_t seed);

// A scatter plot as SVG text: one point per (x, y) with its label as a tooltip, axes with ticks,
// a least-squares line, the title on top. Written by hand: no plotting library.
std::string svg_scatter(const std::string& title, const std::vector<double>& x,
                        const std::vector<double>& y, const std::vector<std::string>& labels,
                        const std::string& x_label, const std::string& y_label);

// A name usable as a file name: characters other than [A-Za-z0-9._-] become '_'.
std::string file_safe(const std::string& name);

// A CSV field, quoted when it holds a comma, a quote or a line break.
std::string csv_field(const std::string& text);

void add_report_options(po::options_description& d);
int run_report(const JobConfig& config, const po::variables_map& vm, const Communicator& world);

}  // namespace mixsim
