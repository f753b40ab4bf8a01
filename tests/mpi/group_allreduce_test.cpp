// Group sums of backend memory (make_group_allreduce) and the gradient buckets that start them
// during a backward pass: MPI on the CPU backend's memory under ctest's 2 and 4 ranks; NCCL and
// the host-staged path where every rank of the node has a GPU of its own (skipped elsewhere,
// with the reason).
#include "mixsim/dist/group_allreduce.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "../support/scoped_env.hpp"
#include "mixsim/backend/device.hpp"

using namespace mixsim;

namespace {

// Small integers: every sum is exact in fp32, in any order, so results compare with ==.
std::vector<float> rank_values(std::size_t n, int rank, int salt = 0) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = float((i + salt) % 7 + rank);
  return v;
}
float expected_sum(std::size_t i, int ranks, int salt = 0) {
  return float(ranks * int((i + salt) % 7) + ranks * (ranks - 1) / 2);
}

// The sums of one buffer through sum(), through start() of its parts in several calls, and
// through GradientBuckets, on `backend`: all exact (in bf16 too: every value and partial sum here
// is an integer below 256).
void check_sums_in(SumFormat format, const Communicator& world, Backend& backend,
                   GroupAllreduce& reduce) {
  const int P = world.size();
  const std::size_t n = 100003;
  DeviceBuffer<float> buf(backend, n);
  std::vector<float> out(n);

  backend.upload(buf.get(), rank_values(n, world.rank()).data(), n * sizeof(float));
  reduce.sum(buf.get(), n, format);
  backend.download(out.data(), buf.get(), n * sizeof(float));
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], expected_sum(i, P)) << "sum, " << i;

  // Three parts in two starts (the middle of the buffer not summed), some progress() between.
  backend.upload(buf.get(), rank_values(n, world.rank(), 3).data(), n * sizeof(float));
  float* b = buf.get();
  const std::span<float> first[] = {std::span<float>(b, 1000), std::span<float>(b + 1000, 5)};
  const std::span<float> second[] = {std::span<float>(b + 50000, n - 50000)};
  reduce.start(first, format);
  reduce.progress();
  reduce.start(second, format);
  reduce.progress();
  reduce.finish();
  backend.download(out.data(), b, n * sizeof(float));
  const auto own = rank_values(n, world.rank(), 3);
  for (std::size_t i = 0; i < n; ++i) {
    const bool summed = i < 1005 || i >= 50000;
    ASSERT_EQ(out[i], summed ? expected_sum(i, P, 3) : own[i]) << "started sums, " << i;
  }

  // Gradient buckets of 64 KB over 16 KB parts reported last to first, as a backward pass does.
  backend.upload(buf.get(), rank_values(n, world.rank(), 5).data(), n * sizeof(float));
  GradientBuckets buckets(reduce, 64 << 10, format);
  const std::size_t part = 4096;  // floats: 16 KB
  std::size_t end = n;
  for (; end > part; end -= part) buckets.ready(std::span<float>(b + end - part, part));
  buckets.ready(std::span<float>(b, end));
  buckets.finish();
  backend.download(out.data(), b, n * sizeof(float));
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], expected_sum(i, P, 5)) << "buckets, " << i;
  // 100003 floats = 24 parts of 4096 and one of 1699: six full buckets of four adjacent parts,
  // each merged into one, then the last part alone in a seventh.
  EXPECT_EQ(buckets.buckets(), 7);
  EXPECT_EQ(buckets.parts(), 7);
}

// check_sums_in both formats.
void check_sums(const Communicator& world, Backend& backend, GroupAllreduce& reduce) {
  check_sums_in(SumFormat::fp32, world, backend, reduce);
  check_sums_in(SumFormat::bf16, world, backend, reduce);
}

bool every_rank_has_a_gpu(const Communicator& world, std::string& why) {
  const GpuAvailability gpu = gpu_availability();
  // NCCL needs one GPU per rank; every rank must agree to skip, or the others would hang.
  const bool usable = world.allreduce_min(gpu.count >= world.size() ? 1.0 : 0.0) > 0;
  if (!usable) why = gpu.count == 0 ? gpu.reason : "fewer GPUs than ranks";
  return usable;
}

}  // namespace

TEST(GroupAllreduce, MpiOnTheCpuBackendsMemory) {
  const auto world = Communicator::world();
  auto cpu = make_backend("cpu");
  const auto reduce = make_group_allreduce(world, *cpu);
  EXPECT_EQ(reduce->kind(), world.size() == 1 ? "local" : "mpi");
  check_sums(world, *cpu, *reduce);
}

// bf16 sums round every rank's value to bf16 first: 1 + 2^-12 is 1 in bf16 (8 significant
// bits), so the bf16 sum over P ranks is P, the fp32 one P (1 + 2^-12) (exact in fp32). Ties go
// to even: 3 + 2^-7 lies halfway between 3 (even last bit) and 3 + 2^-6, so it becomes
// 3; 3 + 3 2^-7 lies halfway between 3 + 2^-6 (odd) and 3 + 2^-5, so it becomes 3 + 2^-5. Their
// sums over 2 and 4 ranks are then P 3 and P (3 + 2^-5), bf16 values reached in any order of
// additions (with 4 in a chain: 9 + 3/32 is a tie that goes to 9 + 1/8, plus 3 + 1/32 another
// that goes to 12 + 1/8). Through sum() and start().
TEST(GroupAllreduce, Bf16SumsRoundEachRanksValues) {
  const auto world = Communicator::world();
  if (world.size() == 1) GTEST_SKIP() << "a group of one rank sums nothing";
  auto cpu = make_backend("cpu");
  const auto reduce = make_group_allreduce(world, *cpu);
  const int P = world.size();
  const float small = 1.0f + std::ldexp(1.0f, -12);
  for (const bool started : {false, true}) {
    std::vector<float> fp32(1000, small), bf16(1000, small);
    if (started) {
      const std::span<float> a[] = {std::span<float>(fp32)}, b[] = {std::span<float>(bf16)};
      reduce->start(a, SumFormat::fp32);
      reduce->start(b, SumFormat::bf16);
      reduce->finish();
    } else {
      reduce->sum(fp32.data(), fp32.size(), SumFormat::fp32);
      reduce->sum(bf16.data(), bf16.size(), SumFormat::bf16);
    }
    for (std::size_t i = 0; i < fp32.size(); ++i) {
      ASSERT_EQ(fp32[i], float(P) * small) << (started ? "started, " : "") << i;
      ASSERT_EQ(bf16[i], float(P)) << (started ? "started, " : "") << i;
    }
  }
  std::vector<float> ties{3.0f + std::ldexp(1.0f, -7), 3.0f + 3 * std::ldexp(1.0f, -7)};
  reduce->sum(ties.data(), ties.size(), SumFormat::bf16);
  if (P == 2 || P == 4) {
    EXPECT_EQ(ties[0], float(P) * 3.0f);
    EXPECT_EQ(ties[1], float(P) * (3.0f + std::ldexp(1.0f, -5)));
  }
}

TEST(GroupAllreduce, BucketsMergeOnlyAdjacentParts) {
  const auto world = Communicator::world();
  auto cpu = make_backend("cpu");
  const auto reduce = make_group_allreduce(world, *cpu);
  std::vector<float> x = rank_values(100, world.rank());
  GradientBuckets buckets(*reduce, 1 << 20, SumFormat::fp32);  // one bucket, at finish()
  buckets.ready(std::span<float>(x.data() + 60, 20));          // [60, 80)
  buckets.ready(std::span<float>(x.data() + 10, 10));          // [10, 20): apart
  buckets.ready(std::span<float>(x.data() + 40, 20));          // [40, 60): joins [60, 80)
  buckets.ready(std::span<float>(x.data() + 80, 5));           // [80, 85): joins [40, 80)
  buckets.ready(std::span<float>(x.data() + 90, 0));           // empty: ignored
  buckets.finish();
  EXPECT_EQ(buckets.buckets(), 1);
  EXPECT_EQ(buckets.parts(), 2);
  const auto own = rank_values(100, world.rank());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const bool summed = (i >= 10 && i < 20) || (i >= 40 && i < 85);
    ASSERT_EQ(x[i], summed ? expected_sum(i, world.size()) : own[i]) << i;
  }
  buckets.finish();  // nothing pending: no sum
  EXPECT_EQ(buckets.buckets(), 0);
}

TEST(GroupAllreduce, NcclOnDeviceMemory) {
  const auto world = Communicator::world();
  std::string why;
  if (!every_rank_has_a_gpu(world, why)) GTEST_SKIP() << "needs one GPU per rank: " << why;
  auto backend = make_backend("cuda");
  const auto reduce = make_group_allreduce(world, *backend);
  EXPECT_EQ(reduce->kind(), world.size() == 1 ? "local" : "nccl");
  check_sums(world, *backend, *reduce);
}

TEST(GroupAllreduce, EnvironmentStagesThroughTheHost) {
  const auto world = Communicator::world();
  std::string why;
  if (!every_rank_has_a_gpu(world, why)) GTEST_SKIP() << "needs one GPU per rank: " << why;
  std::optional<mixsim::testing::ScopedEnv> env(std::in_place, "MIXSIM_NCCL", "0");
  auto backend = make_backend("cuda");
  const auto reduce = make_group_allreduce(world, *backend);
  env.reset();
  EXPECT_EQ(reduce->kind(), world.size() == 1 ? "local" : "mpi-staged");
  check_sums(world, *backend, *reduce);
}
