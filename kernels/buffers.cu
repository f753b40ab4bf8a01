// Whole-buffer arithmetic: model averaging (weighted_sum), scaling, and fp32 <-> bf16 copies
// (the operands of cuda-bf16's products, the bf16 gradient sums).
// weighted_sum is bit-identical to the CPU backend: per element it forms w0*x0, then adds
// w1*x1, w2*x2, ... in input order, each product and sum rounded separately (the _rn intrinsics
// forbid contracting them into a fused multiply-add, which the CPU code does not do either).
#include <cuda_bf16.h>

#include <cstdint>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;

// out = in as Out (bf16 rounded to nearest even, or bf16 widened), n4 groups of four first
// (map_elements in cuda_common.cuh).
template <class Out, class In>
__global__ void convert_kernel(Out* out, const In* in, std::size_t n4, std::size_t n) {
  map_elements(
      out, n4, n, [](float x) { return x; }, in);
}

template <class Out, class In>
void convert(Out* out, const In* in, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const std::size_t n4 = groups4(n, out, in);
  convert_kernel<<<elementwise_blocks(n4 > 0 ? n4 : n, kThreads), kThreads, 0, stream>>>(out, in,
                                                                                         n4, n);
  CUDA_CHECK_LAUNCH(convert_kernel);
}
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

// The same over float4: four elements per thread and iteration, so that each input is read with
// 16-byte loads (a quarter of the load instructions per byte). Used when every
// pointer is 16-byte aligned; the n % 4 tail goes to weighted_sum_kernel.
__global__ void weighted_sum4_kernel(float4* out, Inputs in, bool first, std::size_t n4) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 acc;
    if (first) {
      const float4 x = reinterpret_cast<const float4*>(in.x[0])[i];
      acc = {__fmul_rn(in.w[0], x.x), __fmul_rn(in.w[0], x.y), __fmul_rn(in.w[0], x.z),
             __fmul_rn(in.w[0], x.w)};
    } else {
      acc = out[i];
    }
    for (int j = first ? 1 : 0; j < in.count; ++j) {
      const float4 x = reinterpret_cast<const float4*>(in.x[j])[i];
      const float w = in.w[j];
      acc.x = __fadd_rn(acc.x, __fmul_rn(w, x.x));
      acc.y = __fadd_rn(acc.y, __fmul_rn(w, x.y));
      acc.z = __fadd_rn(acc.z, __fmul_rn(w, x.z));
      acc.w = __fadd_rn(acc.w, __fmul_rn(w, x.w));
    }
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
    bool vector = aligned16(out);
    for (int j = 0; j < in.count; ++j) vector = vector && aligned16(in.x[j]);
    const std::size_t n4 = vector ? n / 4 : 0;
    if (n4 > 0) {
      weighted_sum4_kernel<<<elementwise_blocks(n4, kThreads), kThreads, 0, stream>>>(
          reinterpret_cast<float4*>(out), in, j0 == 0, n4);
      CUDA_CHECK_LAUNCH(weighted_sum4_kernel);
    }
    if (const std::size_t tail = n - 4 * n4; tail > 0) {
      Inputs rest = in;
      for (int j = 0; j < rest.count; ++j) rest.x[j] += 4 * n4;
      weighted_sum_kernel<<<elementwise_blocks(tail, kThreads), kThreads, 0, stream>>>(
          out + 4 * n4, rest, j0 == 0, tail);
      CUDA_CHECK_LAUNCH(weighted_sum_kernel);
    }
  }
}

void scale(float* x, float alpha, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  scale_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(x, alpha, n);
  CUDA_CHECK_LAUNCH(scale_kernel);
}

void to_bf16(__nv_bfloat16* out, const float* in, std::size_t n, cudaStream_t stream) {
  convert(out, in, n, stream);
}

void from_bf16(float* out, const __nv_bfloat16* in, std::size_t n, cudaStream_t stream) {
  convert(out, in, n, stream);
}

}  // namespace mixsim::cuda
