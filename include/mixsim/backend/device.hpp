// Which GPUs this process can use. Safe to call on machines without a GPU or a driver, and in
// builds without CUDA: it then reports zero devices and why.
#pragma once

#include <string>

namespace mixsim {

struct GpuAvailability {
  int count = 0;        // usable CUDA devices
  std::string reason;   // why none is usable (empty when count > 0)
  std::string name;     // first device's name, when count > 0
};

GpuAvailability gpu_availability();

// Runs a tiny kernel (y = a*x + y on n floats) on device 0 and returns max |error| against the
// host result; proves that compile, launch and copies work. Throws Error without a GPU.
double gpu_smoke_axpy(int n);

}  // namespace mixsim
