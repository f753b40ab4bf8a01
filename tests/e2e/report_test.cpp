// `mixsim report` on a tiny trained pipeline with four truth models: the tables, the CSV with
// every number, the SVG plots, and the clear lines when there is no truth or no file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "test_support.hpp"

using namespace mixsim::testing;
namespace fs = std::filesystem;

namespace {

class Report : public ::testing::Test {
 protected:
  void SetUp() override {
    CorpusSpec spec;
    spec.unit_tokens = 3000;  // 7 units
    job_ = write_test_corpus(dir_.path(), spec);
    for (auto args : {std::vector<std::string>{"prepare"},
                      {"train"},
                      {"pool"},
                      {"truth", "--truth.mixtures",
                       "alpha/0+beta/0, alpha/1+gamma/0, beta/1+gamma/0, alpha/2+beta/2"},
                      {"merge-eval", "--merge.sizes", "2"}}) {
      const auto r = run_command(cmd(args));
      ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    }
  }
  std::vector<std::string> cmd(std::vector<std::string> args) const {
    args.insert(args.begin(), mixsim_binary());
    args.insert(args.begin() + 2, {"--config", job_.string()});
    return args;
  }
  TempDir dir_;
  fs::path job_;
};

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(line);
  while (std::getline(in, item, sep)) out.push_back(item);
  if (!line.empty() && line.back() == sep) out.emplace_back();
  return out;
}

}  // namespace

TEST_F(Report, TablesCsvAndPlots) {
  const auto csv = dir_ / "report.csv";
  const auto plots = dir_ / "plots";
  const auto r = run_command(cmd({"report", "--csv", csv.string(), "--plots", plots.string()}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  for (const char* needle :
       {"Best mixtures per eval set", "Proxy vs truth loss over 4 truth models", "Pearson r",
        "Kendall tau-b", "decisions", "alpha (partition alpha)", "ood (out of domain)"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << needle << "\n" << r.out;
  // The summary has a line per relation and proxy.
  for (const char* rel : {"own", "other", "ood", "all"})
    for (const char* proxy : {"merged", "weighted", "macro", "components"}) {
      const std::string start = std::string("  ") + rel;
      bool found = false;
      std::istringstream lines(r.out);
      for (std::string line; std::getline(lines, line);)
        found = found || (line.rfind(start + " ", 0) == 0 && line.find(proxy) != std::string::npos);
      EXPECT_TRUE(found) << rel << " " << proxy << "\n" << r.out;
    }

  // CSV: one header, every row with 10 fields; perplexity = exp(loss) for each score.
  std::ifstream in(csv);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_EQ(line, "kind,eval_set,relation,proxy,mixture,n,statistic,value,ci_low,ci_high");
  std::map<std::string, int> kinds;
  std::map<std::string, double> loss;
  int checked = 0;
  while (std::getline(in, line)) {
    const auto f = split(line, ',');
    ASSERT_EQ(f.size(), 10u) << line;
    ++kinds[f[0]];
    const auto key = f[1] + "|" + f[3] + "|" + f[4];
    if (f[0] == "score" && f[6] == "loss") loss[key] = std::stod(f[7]);
    if (f[0] == "score" && f[6] == "perplexity") {
      EXPECT_NEAR(std::stod(f[7]), std::exp(loss.at(key)), 1e-9 * std::stod(f[7]));
      ++checked;
    }
    if (f[0] == "summary" && f[6] == "pearson" && !f[7].empty()) {
      EXPECT_LE(std::fabs(std::stod(f[7])), 1.0);
      if (!f[8].empty()) {
        EXPECT_LE(std::stod(f[8]), std::stod(f[9]));
      }
    }
  }
  // The continued-pre-training table: alpha/0's own set is alpha; its seed and unit losses are
  // the CSV's (printed to 3 decimals, so within 5e-4) and the gain is their difference.
  EXPECT_NE(r.out.find("pool models beat the seed on their own partition's held-out set"),
            std::string::npos) << r.out;
  {
    std::istringstream lines(r.out);
    bool found = false;
    for (std::string text; std::getline(lines, text);) {
      std::istringstream words(text);
      std::string unit, own;
      double seed = 0, pool = 0, gain = 0;
      if (!(words >> unit >> own >> seed >> pool >> gain) || unit != "alpha/0") continue;
      found = true;
      EXPECT_EQ(own, "alpha");
      EXPECT_NEAR(seed, loss.at("alpha|seed|"), 5e-4) << text;
      EXPECT_NEAR(pool, loss.at("alpha|pool|alpha/0"), 5e-4) << text;
      // Each of the three printed numbers is rounded by at most 5e-4.
      EXPECT_NEAR(gain, seed - pool, 1.5e-3 + 1e-9) << text;
    }
    EXPECT_TRUE(found) << "no row for alpha/0 in\n" << r.out;
  }
  // 4 proxies x 4 relations x 5 statistics in the summary.
  EXPECT_EQ(kinds["summary"], 4 * 4 * 5);
  EXPECT_GT(kinds["correlation"], 0);
  // seed (4) + pool (7 x 4) + proxies (4 x 21 x 4) + truth (4 x 4) scores.
  EXPECT_EQ(checked, 4 + 28 + 4 * 21 * 4 + 16);

  // One plot per eval set and proxy, each with its 4 truth mixtures and r in the title.
  int svgs = 0;
  for (const auto& e : fs::directory_iterator(plots)) {
    ++svgs;
    const auto svg = read_file(e.path());
    EXPECT_EQ(svg.rfind("<svg", 0), 0u) << e.path();
    EXPECT_NE(svg.find("vs truth (r = "), std::string::npos) << e.path();
    std::size_t circles = 0;
    for (auto p = svg.find("<circle"); p != std::string::npos; p = svg.find("<circle", p + 1))
      ++circles;
    EXPECT_EQ(circles, 4u) << e.path();
  }
  EXPECT_EQ(svgs, 4 * 4);
  EXPECT_TRUE(fs::exists(plots / "alpha__merged.svg"));
}

TEST_F(Report, WithoutTruthOrWithoutAFileItSaysSo) {
  const auto merge =
      run_command(cmd({"merge-eval", "--merge.mixtures", "alpha/0+alpha/1",
                       "--merge.truth_mixtures", "false", "--merge.output", "no_truth.h5"}));
  ASSERT_EQ(merge.exit_code, 0) << merge.err;
  const auto r = run_command(cmd({"report", "--results", (dir_ / "run" / "no_truth.h5").string()}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("No truth scores"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("alpha/0+alpha/1"), std::string::npos) << r.out;

  const auto missing = run_command(cmd({"report", "--results", (dir_ / "nope.h5").string()}));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("does not exist"), std::string::npos) << missing.err;
  const auto bad = run_command(cmd({"report", "--top", "0"}));
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
}

// With truth models of two sizes (the fixture's 4 pairs plus 3 triples) the report adds the
// per-size table; its Pearson r for one eval set must be the correlation of that size's proxy
// and truth losses, recomputed here from the CSV's score rows.
TEST_F(Report, BySizeTableWhenTruthModelsHaveSeveralSizes) {
  const std::string triples = "alpha/0+beta/1+gamma/0, alpha/1+beta/0+gamma/0, alpha/2+beta/1+beta/2";
  const auto trained = run_command(cmd({"truth", "--truth.mixtures", triples}));
  ASSERT_EQ(trained.exit_code, 0) << trained.out << trained.err;
  const auto merge = run_command(cmd({"merge-eval", "--merge.sizes", "2"}));
  ASSERT_EQ(merge.exit_code, 0) << merge.out << merge.err;
  const auto csv = dir_ / "sizes.csv";
  const auto r = run_command(cmd({"report", "--csv", csv.string()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_NE(r.out.find("By mixture size k"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  2  merged      4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  3  merged      3"), std::string::npos) << r.out;

  std::ifstream in(csv);
  std::string line;
  std::map<std::string, double> proxy, truth;  // mixture -> loss on eval set alpha
  double reported = std::nan("");
  int by_size_rows = 0;
  while (std::getline(in, line)) {
    const auto f = split(line, ',');
    if (f[0] == "score" && f[1] == "alpha" && f[6] == "loss" && f[3] == "merged")
      proxy[f[4]] = std::stod(f[7]);
    if (f[0] == "score" && f[1] == "alpha" && f[6] == "loss" && f[3] == "truth")
      truth[f[4]] = std::stod(f[7]);
    if (f[0] == "by_size") ++by_size_rows;
    if (f[0] == "by_size" && f[1] == "alpha" && f[2] == "k=3" && f[3] == "merged")
      reported = std::stod(f[7]);
  }
  // 4 proxies x 2 sizes x (4 eval sets + 1 decision row).
  EXPECT_EQ(by_size_rows, 4 * 2 * 5);
  std::vector<double> x, y;
  for (const auto& [name, t] : truth)
    if (std::count(name.begin(), name.end(), '+') == 2) {
      x.push_back(proxy.at(name));
      y.push_back(t);
    }
  ASSERT_EQ(x.size(), 3u);
  const double mx = (x[0] + x[1] + x[2]) / 3, my = (y[0] + y[1] + y[2]) / 3;
  double sxy = 0, sxx = 0, syy = 0;
  for (int i = 0; i < 3; ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  // The CSV prints 17 significant digits; both sides compute in double.
  EXPECT_NEAR(reported, sxy / std::sqrt(sxx * syy), 1e-9);
}
