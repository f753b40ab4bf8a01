#include "mixsim/backend/device.hpp"

#include <gtest/gtest.h>

using namespace mixsim;

TEST(Gpu, SmokeKernelMatchesHost) {
  auto gpu = gpu_availability();
  if (gpu.count == 0) GTEST_SKIP() << "no usable GPU: " << gpu.reason;
  // y + a*x with small exact inputs: both sides compute the same float ops, so the error is 0
  // unless the device contracts to FMA, which changes the result by at most one rounding.
  EXPECT_LE(gpu_smoke_axpy(100003), 1e-5);
}

TEST(Gpu, AvailabilityExplainsAbsence) {
  auto gpu = gpu_availability();
  if (gpu.count == 0) {
    EXPECT_FALSE(gpu.reason.empty());
  } else {
    EXPECT_FALSE(gpu.name.empty());
  }
}
