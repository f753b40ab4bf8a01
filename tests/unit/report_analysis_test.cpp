// The report's analysis on hand-made results: relations of eval sets to mixtures, correlations
// per eval set and pooled by relation, and the SVG and CSV text.
#include <gtest/gtest.h>

#include <cmath>

#include "mixsim/stages/report.hpp"

using namespace mixsim;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Units a/0, b/0, c/0 (partitions a, b, c); eval sets a (partition) and z (ood); the three pairs
// and one triple; truth for all four. The "merged" proxy is the truth plus 1 (a perfect ranker);
// "weighted" reverses the order on set a.
Results analysis_results() {
  Results r;
  r.units = {{"a/0", "a", 1, "1"}, {"b/0", "b", 1, "2"}, {"c/0", "c", 1, "3"}};
  r.eval_sets = {{"a", "partition", "a", 101, 100, 100, "x"}, {"z", "ood", "", 101, 100, 100, "y"}};
  r.mixtures = {{"a/0+b/0", {0, 1}, true, "t1"},
                {"a/0+c/0", {0, 2}, true, "t2"},
                {"b/0+c/0", {1, 2}, true, "t3"},
                {"a/0+b/0+c/0", {0, 1, 2}, true, "t4"}};
  r.truth_loss = {4, 2, {2.0, 3.0, 2.2, 3.3, 2.9, 3.1, 2.1, 3.2}};
  ProxyResults merged{"merged", {}, {4, 2, {}}};
  ProxyResults weighted{"weighted", {}, {4, 2, {}}};
  for (std::size_t i = 0; i < 8; ++i) {
    merged.loss.values.push_back(r.truth_loss.values[i] + 1.0);
    const bool on_a = i % 2 == 0;
    weighted.loss.values.push_back(on_a ? 10.0 - r.truth_loss.values[i] : r.truth_loss.values[i]);
  }
  for (const auto& m : r.mixtures) {
    merged.weights.push_back(std::vector<double>(m.members.size(), 1.0 / double(m.members.size())));
    weighted.weights.push_back(merged.weights.back());
  }
  r.proxies = {merged, weighted};
  r.pool_loss = Matrix::nan(3, 2);
  r.seed_loss = {kNaN, kNaN};
  return r;
}

const Correlation& find(const std::vector<Correlation>& cs, const std::string& set,
                        const std::string& rel, const std::string& proxy) {
  for (const auto& c : cs)
    if (c.eval_set == set && c.relation == rel && c.proxy == proxy) return c;
  throw std::runtime_error("no correlation " + set + "/" + rel + "/" + proxy);
}

}  // namespace

TEST(ReportAnalysis, RelationOfAnEvalSetToAMixture) {
  const auto r = analysis_results();
  EXPECT_EQ(relation(r, 0, 0), "own");    // a/0+b/0 on a
  EXPECT_EQ(relation(r, 2, 0), "other");  // b/0+c/0 on a
  EXPECT_EQ(relation(r, 2, 1), "ood");
}

TEST(ReportAnalysis, CorrelationsPerEvalSetAndPooledByRelation) {
  const auto cs = correlations(analysis_results(), 200, 5);
  const auto& m = find(cs, "a", "all", "merged");
  EXPECT_EQ(m.n, 4u);
  EXPECT_NEAR(m.pearson, 1.0, 1e-12);  // truth + 1
  EXPECT_NEAR(m.spearman, 1.0, 1e-12);
  EXPECT_NEAR(m.kendall, 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(m.decisions.accuracy, 1.0);
  EXPECT_EQ(m.decisions.pairs, 6u);
  const auto& w = find(cs, "a", "all", "weighted");
  EXPECT_NEAR(w.kendall, -1.0, 1e-12);  // reversed
  EXPECT_DOUBLE_EQ(w.decisions.accuracy, 0.0);
  // On set a, three mixtures hold a unit of partition a, one does not.
  EXPECT_EQ(find(cs, "a", "own", "merged").n, 3u);
  EXPECT_EQ(find(cs, "a", "other", "merged").n, 1u);
  // Summary: own pools 3 pairs, ood the 4 of set z, all the 8; decisions add up per set.
  EXPECT_EQ(find(cs, "", "own", "merged").n, 3u);
  EXPECT_EQ(find(cs, "", "ood", "merged").n, 4u);
  const auto& all = find(cs, "", "all", "merged");
  EXPECT_EQ(all.n, 8u);
  EXPECT_EQ(all.decisions.pairs, 12u);  // 6 pairs on each set
  EXPECT_DOUBLE_EQ(all.decisions.accuracy, 1.0);
  EXPECT_NEAR(all.mean_set_pearson, 1.0, 1e-12);
  // weighted: perfect on z, reversed on a: half the decisions, mean of r = (1 + r_a) / 2.
  const auto& wall = find(cs, "", "all", "weighted");
  EXPECT_DOUBLE_EQ(wall.decisions.accuracy, 0.5);
  EXPECT_NEAR(wall.mean_set_pearson, (1.0 + w.pearson) / 2, 1e-12);
  // Intervals exist from 3 pairs on and lie in [-1, 1].
  EXPECT_TRUE(std::isfinite(all.pearson_ci.lo));
  EXPECT_LE(all.pearson_ci.lo, all.pearson_ci.hi);
  EXPECT_GE(all.kendall_ci.lo, -1.0);
  EXPECT_TRUE(std::isnan(find(cs, "a", "other", "merged").pearson_ci.lo));
}

TEST(ReportAnalysis, ScatterPlotIsSvgWithTitleAxesAndOnePointPerPair) {
  const auto svg = svg_scatter("a: merged vs truth (r = 0.912, n = 3)", {1.0, 2.0, 3.5},
                               {2.0, 2.5, 4.0}, {"x<y", "b", "c"}, "proxy", "truth");
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("r = 0.912"), std::string::npos);
  EXPECT_NE(svg.find("x&lt;y"), std::string::npos);  // labels are escaped
  std::size_t circles = 0;
  for (auto p = svg.find("<circle"); p != std::string::npos; p = svg.find("<circle", p + 1))
    ++circles;
  EXPECT_EQ(circles, 3u);
  // All points equal: still a valid plot (a unit range around them), no division by zero.
  const auto flat = svg_scatter("t", {1.0, 1.0}, {2.0, 2.0}, {"a", "b"}, "x", "y");
  EXPECT_EQ(flat.find("nan"), std::string::npos);
  EXPECT_EQ(flat.find("inf"), std::string::npos);
}

TEST(ReportAnalysis, CsvFieldsAndFileNames) {
  EXPECT_EQ(csv_field("a/0+b/0"), "a/0+b/0");
  EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(file_safe("news/0+a b"), "news_0_a_b");
}
