// results.h5: the round trip, and carrying values over to a new run by name (units, mixtures and
// eval sets reordered or added), with stale values (changed models, data or weights) dropped.
#include <gtest/gtest.h>

#include <cmath>

#include "mixsim/core/error.hpp"
#include "mixsim/io/hdf5.hpp"
#include "mixsim/io/results.hpp"
#include "test_support.hpp"

using namespace mixsim;
using mixsim::testing::TempDir;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Units a/0 (partition a), b/0 (b); eval sets a, ood; mixtures a/0+b/0 and b/0; proxies merged
// and components; losses encode their position so that a misplaced copy shows.
Results small_results() {
  Results r;
  r.created_by = "test";
  r.data_file = "data.h5";
  r.seed_file = "seed.h5";
  r.seed_checksum = "00c0ffee";
  r.context = 32;
  r.units = {{"a/0", "a", 100, "aaaa0000"}, {"b/0", "b", 300, "bbbb0000"}};
  r.eval_sets = {{"a", "partition", "a", 11, 10, 10, "e0"}, {"ood", "ood", "", 21, 20, 25, "e1"}};
  r.mixtures = {{"a/0+b/0", {0, 1}, true, "7777"}, {"b/0", {1}, true, ""}};
  ProxyResults merged{"merged", {{0.5, 0.5}, {1.0}}, Matrix::nan(2, 2)};
  merged.loss.values = {1.0, 1.1, 2.0, kNaN};
  ProxyResults components{"components", {{0.5, 0.5}, {1.0}}, Matrix::nan(2, 2)};
  r.proxies = {merged, components};
  r.pool_loss = {2, 2, {3.0, 3.1, 4.0, 4.1}};
  r.seed_loss = {5.0, 5.1};
  r.truth_loss = {2, 2, {0.5, 0.6, kNaN, kNaN}};
  return r;
}

void expect_same(const Results& a, const Results& b) {
  ASSERT_EQ(a.units.size(), b.units.size());
  for (std::size_t u = 0; u < a.units.size(); ++u) {
    EXPECT_EQ(a.units[u].name, b.units[u].name);
    EXPECT_EQ(a.units[u].checksum, b.units[u].checksum);
    EXPECT_EQ(a.units[u].tokens, b.units[u].tokens);
  }
  ASSERT_EQ(a.mixtures.size(), b.mixtures.size());
  for (std::size_t m = 0; m < a.mixtures.size(); ++m) {
    EXPECT_EQ(a.mixtures[m].name, b.mixtures[m].name);
    EXPECT_EQ(a.mixtures[m].members, b.mixtures[m].members);
    EXPECT_EQ(a.mixtures[m].in_space, b.mixtures[m].in_space);
    EXPECT_EQ(a.mixtures[m].truth_checksum, b.mixtures[m].truth_checksum);
  }
  ASSERT_EQ(a.proxies.size(), b.proxies.size());
  for (std::size_t p = 0; p < a.proxies.size(); ++p) {
    EXPECT_EQ(a.proxies[p].name, b.proxies[p].name);
    EXPECT_EQ(a.proxies[p].weights, b.proxies[p].weights);
    EXPECT_TRUE(same_values(a.proxies[p].loss, b.proxies[p].loss)) << a.proxies[p].name;
  }
  EXPECT_TRUE(same_values(a.pool_loss, b.pool_loss));
  EXPECT_TRUE(same_values(a.truth_loss, b.truth_loss));
  EXPECT_EQ(a.seed_loss, b.seed_loss);
  EXPECT_EQ(a.eval_sets.size(), b.eval_sets.size());
}

}  // namespace

TEST(ResultsFile, RoundTripKeepsEveryTableAndNaN) {
  TempDir dir;
  auto r = small_results();
  fill_components(r);
  write_results(dir / "results.h5", r);
  const auto back = read_results(dir / "results.h5");
  expect_same(r, back);
  EXPECT_EQ(back.eval_sets[1].bytes, 25u);
  EXPECT_EQ(back.eval_sets[0].partition, "a");
  EXPECT_EQ(back.seed_checksum, "00c0ffee");
  EXPECT_TRUE(std::isnan(back.proxies[0].loss.at(1, 1)));
  // The layout h5py users rely on.
  const auto f = h5::File::open(dir / "results.h5");
  EXPECT_EQ(f.string_attribute("format"), kResultsFormat);
  EXPECT_EQ(f.open_dataset("proxies/merged/loss").shape(), (std::vector<std::size_t>{2, 2}));
  EXPECT_EQ(f.open_dataset("mixtures/offsets").read<std::int64_t>(),
            (std::vector<std::int64_t>{0, 2, 3}));
  EXPECT_EQ(f.open_dataset("mixtures/members").read<std::int64_t>(),
            (std::vector<std::int64_t>{0, 1, 1}));
}

TEST(ResultsFile, ComponentsAreTheMeanOfTheMembersOwnLosses) {
  auto r = small_results();
  fill_components(r);
  const auto& c = r.proxies[1].loss;
  EXPECT_DOUBLE_EQ(c.at(0, 0), (3.0 + 4.0) / 2);
  EXPECT_DOUBLE_EQ(c.at(0, 1), (3.1 + 4.1) / 2);
  EXPECT_DOUBLE_EQ(c.at(1, 0), 4.0);
  r.pool_loss.at(0, 1) = kNaN;  // a member not scored yet: no mean
  fill_components(r);
  EXPECT_TRUE(std::isnan(r.proxies[1].loss.at(0, 1)));
}

TEST(ResultsFile, MissingCountsOnlyWhatARunCanEvaluate) {
  auto r = small_results();
  // merged (1,1) is NaN; components are derived; truth of b/0 has no model; pool and seed full.
  EXPECT_EQ(r.missing(), 1u);
  r.mixtures[1].in_space = false;  // kept from an older run: never evaluated again
  EXPECT_EQ(r.missing(), 0u);
}

TEST(ResultsFile, CarryOverMatchesByNameWhateverTheOrder) {
  const auto old = small_results();
  // The new run: a unit c/0 first, units reordered, a new eval set first, mixtures reordered and
  // one new mixture.
  Results fresh;
  fresh.seed_checksum = old.seed_checksum;
  fresh.context = old.context;
  fresh.units = {
      {"c/0", "c", 50, "cccc0000"}, {"b/0", "b", 300, "bbbb0000"}, {"a/0", "a", 100, "aaaa0000"}};
  fresh.eval_sets = {{"new", "ood", "", 5, 4, 4, "e9"}, old.eval_sets[1], old.eval_sets[0]};
  fresh.mixtures = {
      {"b/0", {1}, true, ""}, {"c/0+b/0", {0, 1}, true, ""}, {"b/0+a/0", {1, 2}, true, "7777"}};
  fresh.proxies = {{"merged", {{1.0}, {0.5, 0.5}, {0.5, 0.5}}, Matrix::nan(3, 3)}};
  fresh.pool_loss = Matrix::nan(3, 3);
  fresh.seed_loss.assign(3, kNaN);
  fresh.truth_loss = Matrix::nan(3, 3);
  const auto copied = carry_over(fresh, old);
  const auto& merged = fresh.proxies[0].loss;
  // a/0+b/0 -> row 2; columns a -> 2, ood -> 1.
  EXPECT_EQ(merged.at(2, 2), 1.0);
  EXPECT_EQ(merged.at(2, 1), 1.1);
  EXPECT_EQ(merged.at(0, 2), 2.0);
  EXPECT_TRUE(std::isnan(merged.at(0, 1)));           // was not evaluated
  EXPECT_TRUE(std::isnan(merged.at(1, 2)));           // a new mixture
  EXPECT_TRUE(std::isnan(merged.at(2, 0)));           // a new eval set
  EXPECT_EQ(fresh.pool_loss.at(2, 2), 3.0);           // a/0 on a
  EXPECT_EQ(fresh.pool_loss.at(1, 1), 4.1);           // b/0 on ood
  EXPECT_TRUE(std::isnan(fresh.pool_loss.at(0, 2)));  // c/0 is new
  EXPECT_EQ(fresh.seed_loss[1], 5.1);
  EXPECT_EQ(fresh.truth_loss.at(2, 2), 0.5);
  EXPECT_EQ(copied, 3u + 4u + 2u + 2u);  // merged, pool, seed, truth values
}

TEST(ResultsFile, StaleValuesAreNotCarriedOver) {
  const auto old = small_results();
  {  // b/0's pool model was retrained: its own score and every mixture with it are dropped
    auto fresh = small_results();
    for (auto& p : fresh.proxies) p.loss = Matrix::nan(2, 2);
    fresh.pool_loss = Matrix::nan(2, 2);
    fresh.units[1].checksum = "bbbb1111";
    carry_over(fresh, old);
    EXPECT_EQ(fresh.pool_loss.at(0, 0), 3.0);
    EXPECT_TRUE(std::isnan(fresh.pool_loss.at(1, 0)));
    EXPECT_TRUE(std::isnan(fresh.proxies[0].loss.at(0, 0)));
    EXPECT_TRUE(std::isnan(fresh.proxies[0].loss.at(1, 0)));
  }
  {  // eval set a changed (another checksum): its column is dropped, ood is kept
    auto fresh = small_results();
    fresh.proxies[0].loss = Matrix::nan(2, 2);
    fresh.eval_sets[0].checksum = "changed";
    carry_over(fresh, old);
    EXPECT_TRUE(std::isnan(fresh.proxies[0].loss.at(0, 0)));
    EXPECT_EQ(fresh.proxies[0].loss.at(0, 1), 1.1);
  }
  {  // other weights for the same mixture (e.g. unit token counts changed)
    auto fresh = small_results();
    fresh.proxies[0].loss = Matrix::nan(2, 2);
    fresh.proxies[0].weights[0] = {0.25, 0.75};
    carry_over(fresh, old);
    EXPECT_TRUE(std::isnan(fresh.proxies[0].loss.at(0, 0)));
    EXPECT_EQ(fresh.proxies[0].loss.at(1, 0), 2.0);
  }
  {  // another seed: nothing at all
    auto fresh = small_results();
    fresh.seed_checksum = "another";
    fresh.proxies[0].loss = Matrix::nan(2, 2);
    EXPECT_EQ(carry_over(fresh, old), 0u);
  }
}

TEST(ResultsFile, OldMixturesOutsideTheNewSpaceAreKept) {
  const auto old = small_results();
  auto fresh = small_results();
  fresh.mixtures.pop_back();  // the new run asks only for a/0+b/0
  for (auto& p : fresh.proxies) {
    p.weights.pop_back();
    p.loss = Matrix::nan(1, 2);
  }
  fresh.truth_loss = Matrix::nan(1, 2);
  carry_over(fresh, old);
  ASSERT_EQ(fresh.mixtures.size(), 2u);
  EXPECT_EQ(fresh.mixtures[1].name, "b/0");
  EXPECT_FALSE(fresh.mixtures[1].in_space);
  EXPECT_EQ(fresh.proxies[0].loss.at(1, 0), 2.0);
  EXPECT_EQ(fresh.proxies[0].weights[1], (std::vector<double>{1.0}));
  EXPECT_EQ(fresh.truth_loss.rows, 2u);
}

TEST(ResultsFile, OtherFilesAreClearErrors) {
  TempDir dir;
  EXPECT_THROW(read_results(dir / "missing.h5"), Error);
  mixsim::testing::write_file(dir / "text.h5", "not hdf5");
  EXPECT_THROW(read_results(dir / "text.h5"), Error);
  {
    auto f = h5::File::create(dir / "other.h5");
    f.set_attribute("format", "mixsim-data");
    f.close();
  }
  try {
    read_results(dir / "other.h5");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a mixsim results file"), std::string::npos)
        << e.what();
  }
}
