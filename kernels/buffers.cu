// Whole-buffer arithmetic: model averaging (weighted_sum) and scaling.
// weighted_sum is bit-identical to the CPU backend: per element it forms w0*x0, then adds
// w1*x1, w2*x2, ... in input order, each product and sum rounded separately (the _rn intrinsics
// forbid contracting them into a fused multiply-add, which the CPU code does not do either).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kInputsPerLaunch = 16;  // passed by value as kernel parameters

struct Inputs {
  const float* x[kInputsPerLaunch];
  float w[kInputsPerLaunch];
  int count;
};

// With `first`, out = w0*x0 + ...; otherwise out holds the sum of the earlier inputs and the
// launch continues it. All inputs of an element are read before it is written, so out may alias
// any input of this launch.
__global__ void weighted_sum_kernel(float* out, Inputs in, bool first, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float acc = first ? __fmul_rn(in.w[0], in.x[0][i]) : out[i];
    for (int j = first ? 1 : 0; j < in.count; ++j)
      acc = __fadd_rn(acc, __fmul_rn(in.w[j], in.x[j][i]));
    out[i] = acc;
  }
}

__global__ void scale_kernel(float* x, float alpha, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = __fmul_rn(x[i], alpha);
}

}  // namespace

void weighted_sum(float* out, const float* const* inputs, const float* weights, int k,
                  std::size_t n, cudaStream_t stream) {
  CUDA_REQUIRE(k > 0, "weighted_sum", dims({{"k", k}}));
  if (n == 0) return;
  // Groups of kInputsPerLaunch inputs, in order; from the second group on, out carries the sum.
  for (int j0 = 0; j0 < k; j0 += kInputsPerLaunch) {
    Inputs in{};
    in.count = k - j0 < kInputsPerLaunch ? k - j0 : kInputsPerLaunch;
    for (int j = 0; j < in.count; ++j) {
      in.x[j] = inputs[j0 + j];
      in.w[j] = weights[j0 + j];
      // out holds a partial sum between launches: a later input must not be out itself
      CUDA_REQUIRE(j0 == 0 || in.x[j] != out, "weighted_sum",
                   dims({{"aliased input", j0 + j}, {"k", k}}));
    }
    weighted_sum_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(out, in, j0 == 0,
                                                                                  n);
    CUDA_CHECK_LAUNCH(weighted_sum_kernel);
  }
}

void scale(float* x, float alpha, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  scale_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(x, alpha, n);
  CUDA_CHECK_LAUNCH(scale_kernel);
}

}  // namespace mixsim::cuda
