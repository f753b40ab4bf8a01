// Averaging pool models: the proxies' weights and the collective average (on one rank here; the
// MPI test runs it over groups of ranks) against hand-computed means.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/error_types.hpp"
#include "mixsim/dist/communicator.hpp"
#include "mixsim/stages/merge_eval.hpp"
#include "mixsim/stages/mixtures.hpp"

using namespace mixsim;

namespace {

// collective_average takes a communicator: a singleton MPI for the whole test binary.
class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { session_ = std::make_unique<MpiSession>(nullptr, nullptr); }
  void TearDown() override { session_.reset(); }

 private:
  std::unique_ptr<MpiSession> session_;
};
[[maybe_unused]] auto* const kMpi = ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

UnitRecord unit(const std::string& name, const std::string& partition, std::uint64_t tokens) {
  UnitRecord u;
  u.name = name;
  u.partition = partition;
  u.tokens = tokens;
  return u;
}

// The average of `models` with `weights` through collective_average on a one-rank group.
std::vector<float> average(const std::vector<std::vector<float>>& models,
                           const std::vector<double>& weights) {
  auto backend = make_cpu_backend();
  const std::size_t n = models.front().size();
  std::vector<DeviceBuffer<float>> buffers;
  std::vector<const float*> pointers;
  for (const auto& m : models) {
    buffers.emplace_back(*backend, n);
    backend->upload(buffers.back().get(), m.data(), n * sizeof(float));
    pointers.push_back(buffers.back().get());
  }
  const std::vector<float> w(weights.begin(), weights.end());
  DeviceBuffer<float> out(*backend, n);
  std::vector<float> host(n);
  const auto world = Communicator::world();
  collective_average(*backend, out.get(), pointers, w, n, *make_group_allreduce(world, *backend));
  backend->download(host.data(), out.get(), n * sizeof(float));
  return host;
}

}  // namespace

TEST(MergeAverage, UniformAverageOfFourModelsIsTheirMean) {
  const std::vector<UnitRecord> units{unit("a/0", "a", 10), unit("b/0", "b", 20),
                                      unit("c/0", "c", 30), unit("d/0", "d", 40)};
  const auto w = proxy_weights("merged", {0, 1, 2, 3}, units);
  EXPECT_EQ(w, (std::vector<double>{0.25, 0.25, 0.25, 0.25}));
  // Quarters and small integers are exact in binary: the mean is exact too.
  const auto avg = average({{1, 2, -3}, {3, 6, 5}, {5, 10, 7}, {7, 14, -1}}, w);
  EXPECT_EQ(avg, (std::vector<float>{4, 8, 2}));
}

TEST(MergeAverage, UniformAverageOfThreeModelsIsTheirMeanToRounding) {
  const std::vector<UnitRecord> units{unit("a/0", "a", 1), unit("b/0", "b", 1),
                                      unit("c/0", "c", 1)};
  const auto w = proxy_weights("merged", {0, 1, 2}, units);
  const auto avg = average({{0.1f, 1.0f}, {0.2f, 2.0f}, {0.6f, 4.0f}}, w);
  // float(1/3) times each value, summed in float: three products and two sums, each within half an
  // ulp of its result, so the mean is within 4 ulps of the exact one.
  const double exact[] = {(0.1f + 0.2f + 0.6f) / 3.0, 7.0 / 3.0};
  for (int i = 0; i < 2; ++i)
    EXPECT_NEAR(avg[i], exact[i], 4 * std::numeric_limits<float>::epsilon() * exact[i]);
}

TEST(MergeAverage, WeightedAverageFollowsTheUnitsTokenCounts) {
  const std::vector<UnitRecord> units{unit("a/0", "a", 100), unit("b/0", "b", 300)};
  const auto w = proxy_weights("weighted", {0, 1}, units);
  EXPECT_EQ(w, (std::vector<double>{0.25, 0.75}));                        // 100/400, 300/400
  EXPECT_EQ(average({{4, 8}, {8, 16}}, w), (std::vector<float>{7, 14}));  // 1 + 6, 2 + 12
}

TEST(MergeAverage, MacroAverageIsTheAverageOfThePartitionAverages) {
  // Two units of partition a and one of b: mean(mean(a/0, a/1), b/0).
  const std::vector<UnitRecord> units{unit("a/0", "a", 5), unit("a/1", "a", 7),
                                      unit("b/0", "b", 9)};
  const auto w = proxy_weights("macro", {0, 1, 2}, units);
  EXPECT_EQ(w, (std::vector<double>{0.25, 0.25, 0.5}));
  const auto avg = average({{4, 0}, {8, 2}, {2, 10}}, w);
  // partition a: (4+8)/2 = 6, (0+2)/2 = 1; with b: (6+2)/2 = 4, (1+10)/2 = 5.5
  EXPECT_EQ(avg, (std::vector<float>{4, 5.5f}));
  // With one unit per partition, macro and merged are the same average.
  EXPECT_EQ(proxy_weights("macro", {0, 2}, units), proxy_weights("merged", {0, 2}, units));
}

TEST(MergeAverage, ComponentsWeighTheMembersEquallyAndUnknownProxiesAreErrors) {
  const std::vector<UnitRecord> units{unit("a/0", "a", 5), unit("a/1", "a", 7)};
  EXPECT_EQ(proxy_weights("components", {0, 1}, units), (std::vector<double>{0.5, 0.5}));
  EXPECT_THROW(proxy_weights("median", {0, 1}, units), UsageError);
}

TEST(MergeAverage, ARankHoldingNoMemberContributesZeros) {
  auto backend = make_cpu_backend();
  DeviceBuffer<float> out(*backend, 3);
  const std::vector<float> junk{9, 9, 9};
  backend->upload(out.get(), junk.data(), 3 * sizeof(float));
  std::vector<float> host(3);
  const auto world = Communicator::world();
  collective_average(*backend, out.get(), {}, {}, 3, *make_group_allreduce(world, *backend));
  backend->download(host.data(), out.get(), 3 * sizeof(float));
  EXPECT_EQ(host, (std::vector<float>{0, 0, 0}));
}
