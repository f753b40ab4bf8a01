// The device gradient allreduce of a training group: none for the CPU backend or with
// MIXSIM_NCCL=0, and through NCCL on GPUs an exact sum over the ranks (where every rank of the
// node has a GPU of its own; skipped elsewhere with the reason).
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "mixsim/backend/device.hpp"
#include "mixsim/dist/device_allreduce.hpp"

using namespace mixsim;

TEST(DeviceAllreduce, NoneForTheCpuBackend) {
  const auto world = Communicator::world();
  auto cpu = make_backend("cpu");
  EXPECT_EQ(make_device_allreduce(world, *cpu), nullptr);
}

TEST(DeviceAllreduce, NcclSumsExactlyOverTheRanks) {
  const auto world = Communicator::world();
  const GpuAvailability gpu = gpu_availability();
  // NCCL needs one GPU per rank; every rank must agree to skip, or the others would hang.
  const bool usable = world.allreduce_min(gpu.count >= world.size() ? 1.0 : 0.0) > 0;
  if (!usable)
    GTEST_SKIP() << "needs one GPU per rank (" << world.size() << "): "
                 << (gpu.count == 0 ? gpu.reason : "too few GPUs");
  auto backend = make_backend("cuda");
  auto sum = make_device_allreduce(world, *backend);
  ASSERT_NE(sum, nullptr);
  // Small integers: every sum is exact in fp32, in any order.
  const std::size_t n = 100003;
  std::vector<float> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = float((i % 7) + world.rank());
  DeviceBuffer<float> buf(*backend, n);
  backend->upload(buf.get(), host.data(), n * sizeof(float));
  sum->sum(buf.get(), n);
  std::vector<float> out(n);
  backend->download(out.data(), buf.get(), n * sizeof(float));
  const int P = world.size();
  for (std::size_t i = 0; i < n; ++i)
    ASSERT_EQ(out[i], float(P * int(i % 7) + P * (P - 1) / 2)) << "element " << i;
}

TEST(DeviceAllreduce, EnvironmentTurnsItOff) {
  const auto world = Communicator::world();
  const GpuAvailability gpu = gpu_availability();
  if (world.allreduce_min(gpu.count > 0 ? 1.0 : 0.0) == 0)
    GTEST_SKIP() << "no usable GPU: " << gpu.reason;
  setenv("MIXSIM_NCCL", "0", 1);
  auto backend = make_backend("cuda");
  EXPECT_EQ(make_device_allreduce(world, *backend), nullptr);
  unsetenv("MIXSIM_NCCL");
}
