// The GPU probe and a smoke kernel: is a device usable, and do launches and copies work.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "mixsim/backend/device.hpp"

namespace mixsim {
namespace {

__global__ void axpy_kernel(float* y, const float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += a * x[i];
}

}  // namespace

GpuAvailability gpu_availability() {
  int count = 0;  // cudaGetDeviceCount leaves it unwritten when there is no driver
  cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return {0, std::string("no usable CUDA driver or device: ") + cudaGetErrorString(rc), ""};
  }
  if (count == 0) return {0, "the CUDA driver reports no devices", ""};
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return {0, "cannot query device 0", ""};
  return {count, "", prop.name};
}

double gpu_smoke_axpy(int n) {
  if (n <= 0) throw Error("gpu_smoke_axpy needs n > 0");
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) {
    x[i] = 0.5f * static_cast<float>(i % 17);
    y[i] = static_cast<float>(i % 5);
  }
  const float a = 1.5f;
  float *dx = nullptr, *dy = nullptr;
  CUDA_CHECK(cudaMalloc(&dx, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&dy, n * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  const int block = 256;
  axpy_kernel<<<CEIL_DIV(n, block), block>>>(dy, dx, a, n);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> out(n);
  CUDA_CHECK(cudaMemcpy(out.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(dx));
  CUDA_CHECK(cudaFree(dy));
  double err = 0;
  for (int i = 0; i < n; ++i) {
    double d = static_cast<double>(out[i]) - (static_cast<double>(y[i]) + a * x[i]);
    err = d < 0 ? (err > -d ? err : -d) : (err > d ? err : d);
  }
  return err;
}

}  // namespace mixsim
