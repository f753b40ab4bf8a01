// The GPU probe of a build without CUDA (-DMIXSIM_CUDA=OFF or no nvcc).
#ifndef MIXSIM_HAVE_CUDA
#include "mixsim/backend/device.hpp"
#include "mixsim/core/error.hpp"

namespace mixsim {

GpuAvailability gpu_availability() {
  return {0, "mixsim was built without CUDA (MIXSIM_CUDA=OFF or nvcc not found)", ""};
}

double gpu_smoke_axpy(int) { fail("mixsim was built without CUDA; rebuild with -DMIXSIM_CUDA=ON"); }

}  // namespace mixsim
#endif
