// GELU, tanh approximation as in GPT-2: 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi),
// in the form x / (1 + exp(-2 k (x + 0.044715 x^3))).
// Elementwise, from an fp32 or bf16 input into an fp32 or bf16 output; the backward pass may run
// in place (dinp == dout, fp32: each element is read, then written, by one thread).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr float kGeluScale = 0.7978845608028654f;
constexpr float kGeluCube = 0.044715f;

// As computed on the CPU (src/backend/cpu/layers.cpp): x s with s = 0.5 (1 + tanh(u)) =
// 1 / (1 + exp(-2u)), which keeps the tiny results of negative x accurate (1 + tanh(u) cancels
// there). expf overflows to inf below x ~ -9.4, where s is then 0, as the result rounds to anyway.
__device__ inline float gelu_exp(float x) {
  return expf(-2.f * kGeluScale * (x + kGeluCube * x * x * x));
}

__device__ inline float gelu(float x) {
  return x / (1.f + gelu_exp(x));
}

// MIXSIM_GELU_EXP2 (on by default for cuda-bf16, off for cuda): the same formula on the
// hardware's approximations, exp(-2u) as 2^(x (a + b x^2)) with a = -2 k log2 e and
// b = 0.044715 a folded (exp2_ftz), and the division as x times the hardware's reciprocal
// (__fdividef: 0 where 1 + exp overflows, as x / inf is). Within a few ulps of gelu (the CPU's
// form, ~1e-7 relative). expf and the IEEE division made the kernel bound by issuing instructions
// rather than by memory (SM 75%, issue 79%: Nsight Compute on an H200); this form compiles to a
// third of the instructions (SASS, sm_90: 104 against 312 a kernel), and GPT-2's bf16 GELU
// forward went from 1.457 to 1.325 ms a step with its product, +0.7% tokens/s (H200, 2026-11-27,
// docs/benchmarks.md).
constexpr float kGeluA = -2.f * kGeluScale * 1.4426950408889634f;
constexpr float kGeluB = kGeluA * kGeluCube;
__device__ inline float gelu_exp2(float x) {
  return __fdividef(x, 1.f + exp2_ftz(x * fmaf(kGeluB, x * x, kGeluA)));
}

// The GELU's derivative at x times d: s + x s' du/dx, s' = 2 s (1 - s).
__device__ inline float gelu_grad(float x, float d) {
  const float s = 1.f / (1.f + gelu_exp(x));
  const float du = kGeluScale * (1.f + 3.f * kGeluCube * x * x);
  const float grad = s + 2.f * x * s * (1.f - s) * du;
  return grad * d;
}

// Both kernels take n4 groups of four first, then the rest one element at a time (map_elements in
// cuda_common.cuh: each element read before it is written, by one thread).
template <class Out, class In, bool Exp2>
__global__ void gelu_forward_kernel(Out* out, const In* inp, std::size_t n4, std::size_t n) {
  map_elements(
      out, n4, n, [](float x) { return Exp2 ? gelu_exp2(x) : gelu(x); }, inp);
}

template <class Out, class In>
__global__ void gelu_backward_kernel(Out* dinp, const In* inp, const float* dout, std::size_t n4,
                                     std::size_t n) {
  map_elements(
      dinp, n4, n, [](float x, float d) { return gelu_grad(x, d); }, inp, dout);
}

}  // namespace

void gelu_forward(TensorOut out, TensorIn inp, std::size_t n, bool exp2, cudaStream_t stream) {
  if (n == 0) return;
  typed(out, [&](auto* o) {
    typed(inp, [&](const auto* x) {
      using Out = std::remove_pointer_t<decltype(o)>;
      using In = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
      const std::size_t n4 = groups4(n, o, x);
      auto* kernel =
          exp2 ? gelu_forward_kernel<Out, In, true> : gelu_forward_kernel<Out, In, false>;
      kernel<<<elementwise_blocks(n4 > 0 ? n4 : n, kThreads), kThreads, 0, stream>>>(o, x, n4, n);
    });
  });
  CUDA_CHECK_LAUNCH(gelu_forward_kernel);
}

void gelu_backward(TensorOut dinp, TensorIn inp, const float* dout, std::size_t n,
                   cudaStream_t stream) {
  if (n == 0) return;
  CUDA_REQUIRE(dinp.type == DType::fp32 ||
                   !bytes_overlap(dinp.data, n * element_bytes(dinp.type), dout, n * sizeof(float)),
               "gelu_backward", std::string("a bf16 dinp that overlaps dout"));
  typed(dinp, [&](auto* d) {
    typed(inp, [&](const auto* x) {
      const std::size_t n4 = groups4(n, d, x, dout);
      gelu_backward_kernel<<<elementwise_blocks(n4 > 0 ? n4 : n, kThreads), kThreads, 0, stream>>>(
          d, x, dout, n4, n);
    });
  });
  CUDA_CHECK_LAUNCH(gelu_backward_kernel);
}

}  // namespace mixsim::cuda
