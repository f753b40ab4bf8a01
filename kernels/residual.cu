// The residual add: out = a + b, elementwise (out may alias a or b).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = a[i] + b[i];
}

}  // namespace

void residual_forward(float* out, const float* a, const float* b, std::size_t n,
                      cudaStream_t stream) {
  if (n == 0) return;
  residual_forward_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(out, a, b, n);
  CUDA_CHECK_LAUNCH(residual_forward_kernel);
}

}  // namespace mixsim::cuda
