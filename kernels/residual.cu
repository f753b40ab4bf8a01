// The residual add: out = a + b, elementwise (out may alias a or b).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;

// groups4 groups of four first (float4), then one element at a time (groups4() in
// cuda_common.cuh); each element read before it is written, by one thread.
__global__ void residual_forward_kernel(float* out, const float* a, const float* b, std::size_t n4,
                                        std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  const std::size_t first = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::size_t i = first; i < n4; i += stride) {
    const float4 x = reinterpret_cast<const float4*>(a)[i],
                 y = reinterpret_cast<const float4*>(b)[i];
    reinterpret_cast<float4*>(out)[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  }
  for (std::size_t i = 4 * n4 + first; i < n; i += stride) out[i] = a[i] + b[i];
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
