// The GPU probe and the CUDA backend factory of a build without CUDA (-DMIXSIM_CUDA=OFF or no
// nvcc).
#ifndef MIXSIM_HAVE_CUDA
#include "mixsim/backend/cuda.hpp"
#include "mixsim/backend/device.hpp"
#include "mixsim/core/error.hpp"

namespace mixsim {

GpuAvailability gpu_availability() {
  return {0, "mixsim was built without CUDA (MIXSIM_CUDA=OFF or nvcc not found)", ""};
}

double gpu_smoke_axpy(int) {
  fail("mixsim was built without CUDA; rebuild with -DMIXSIM_CUDA=ON");
}

std::unique_ptr<Backend> make_cuda_backend(int, MatmulPrecision) {
  fail(
      "the CUDA backend is not available: mixsim was built without CUDA; rebuild with "
      "-DMIXSIM_CUDA=ON, or use backend cpu");
}

std::string cuda_pci_bus_id(Backend&) {
  fail(
      "the CUDA backend is not available: mixsim was built without CUDA; rebuild with "
      "-DMIXSIM_CUDA=ON");
}

CublasLtUse cublaslt_use(Backend&) {
  fail(
      "the CUDA backend is not available: mixsim was built without CUDA; rebuild with "
      "-DMIXSIM_CUDA=ON");
}

CudaKernelChoices cuda_kernel_choices(Backend&) {
  fail(
      "the CUDA backend is not available: mixsim was built without CUDA; rebuild with "
      "-DMIXSIM_CUDA=ON");
}

std::string nccl_unique_id() {
  fail("NCCL is not available: mixsim was built without CUDA; rebuild with -DMIXSIM_CUDA=ON");
}

std::unique_ptr<GroupAllreduce> make_nccl_allreduce(Backend&, const std::string&, int, int) {
  fail("NCCL is not available: mixsim was built without CUDA; rebuild with -DMIXSIM_CUDA=ON");
}

}  // namespace mixsim
#endif
