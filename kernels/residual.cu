// The residual add: out = a + b, elementwise (out may alias a or b).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;

// n4 groups of four first, then one element at a time (map_elements in cuda_common.cuh: each
// element read before it is written, by one thread).
__global__ void residual_forward_kernel(float* out, const float* a, const float* b, std::size_t n4,
                                        std::size_t n) {
  map_elements(
      out, n4, n, [](float x, float y) { return x + y; }, a, b);
}

}  // namespace

void residual_forward(float* out, const float* a, const float* b, std::size_t n,
                      cudaStream_t stream) {
  if (n == 0) return;
  const std::size_t n4 = groups4(n, out, a, b);
  residual_forward_kernel<<<elementwise_blocks(n4 > 0 ? n4 : n, kThreads), kThreads, 0, stream>>>(
      out, a, b, n4, n);
  CUDA_CHECK_LAUNCH(residual_forward_kernel);
}

}  // namespace mixsim::cuda
