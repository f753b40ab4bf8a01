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

// The GELU's derivative at x times d: s + x s' du/dx, s' = 2 s (1 - s).
__device__ inline float gelu_grad(float x, float d) {
  const float s = 1.f / (1.f + gelu_exp(x));
  const float du = kGeluScale * (1.f + 3.f * kGeluCube * x * x);
  const float grad = s + 2.f * x * s * (1.f - s) * du;
  return grad * d;
}

// Both kernels take n4 groups of four first, then the rest one element at a time (map_elements in
// cuda_common.cuh: each element read before it is written, by one thread).
template <class Out, class In>
__global__ void gelu_forward_kernel(Out* out, const In* inp, std::size_t n4, std::size_t n) {
  map_elements(
      out, n4, n, [](float x) { return gelu(x); }, inp);
}

template <class Out, class In>
__global__ void gelu_backward_kernel(Out* dinp, const In* inp, const float* dout, std::size_t n4,
                                     std::size_t n) {
  map_elements(
      dinp, n4, n, [](float x, float d) { return gelu_grad(x, d); }, inp, dout);
}

}  // namespace

void gelu_forward(TensorOut out, TensorIn inp, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  typed(out, [&](auto* o) {
    typed(inp, [&](const auto* x) {
      const std::size_t n4 = groups4(n, o, x);
      gelu_forward_kernel<<<elementwise_blocks(n4 > 0 ? n4 : n, kThreads), kThreads, 0, stream>>>(
          o, x, n4, n);
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
