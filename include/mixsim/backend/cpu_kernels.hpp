// The CPU backend's kernels, templated on the scalar type: the backend runs them in float, the
// finite-difference tests in double. Shapes, argument order and gradient semantics are those of
// the matching Backend ops (backend/ops.hpp). Instantiated for float and double.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/bf16.hpp"

namespace mixsim::cpu {

// Row-major C = alpha * op(A) @ op(B) + beta * C through BLAS (sgemm / dgemm). Called from
// inside an OpenMP parallel region it runs single-threaded on the calling thread.
template <class F>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, F alpha, const F* A, int lda, const F* B,
          int ldb, F beta, F* C, int ldc);

template <class F>
void encoder_forward(F* out, const int* tokens, const F* wte, const F* wpe, int B, int T, int C);
template <class F>
void encoder_backward(F* dwte, F* dwpe, const F* dout, const int* tokens, int B, int T, int C);

template <class F>
void layernorm_forward(F* out, F* mean, F* rstd, const F* inp, const F* weight, const F* bias,
                       int N, int C);
template <class F>
void layernorm_backward(F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                        const F* mean, const F* rstd, int N, int C);

template <class F>
void matmul_forward(F* out, const F* inp, const F* weight, const F* bias, int N, int C, int OC);
template <class F>
void matmul_backward(F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                     int N, int C, int OC);
// dbias (OC) += column sums of dout (N,OC), rows added in order (matmul_backward's bias part).
template <class F>
void bias_backward(F* dbias, const F* dout, int N, int OC);

template <class F>
void attention_forward(F* out, F* lse, const F* qkv, int B, int T, int C, int NH);
template <class F>
void attention_backward(F* dqkv, const F* dout, const F* qkv, const F* out, const F* lse, int B,
                        int T, int C, int NH);

// Attention with the bf16 roundings of the tensor-core kernels (kernels/attention_tc.cu), float
// only: cpu-bf16 (unless MIXSIM_TC_ATTENTION=0), for head sizes 16..128 in steps of 16, as there
// (the GPU also needs the kernels to fit its shared memory per block, which cards with 99 KiB do
// not for head size 128; this side does not check that). Forward walks the keys in the kernel's
// tiles of 64, so P is rounded relative to the same running max.
bool attention_bf16_supported(int C, int NH);
void attention_bf16_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
void attention_bf16_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int C, int NH);

template <class F>
void gelu_forward(F* out, const F* inp, std::size_t n);
template <class F>
void gelu_backward(F* dinp, const F* inp, const F* dout, std::size_t n);

template <class F>
void residual_forward(F* out, const F* a, const F* b, std::size_t n);

template <class F>
void classifier(F* logits, F* losses, const int* targets, F dloss, bool write_dlogits, int N, int V,
                int Vp);

template <class F>
void adamw(F* params, F* m, F* v, const F* grads, std::size_t n, const AdamWArgs& args);
template <class F>
double sum_squares(const F* x, std::size_t n);
template <class F>
void weighted_sum(F* out, const F* const* inputs, const F* weights, int k, std::size_t n);
template <class F>
void scale(F* x, F alpha, std::size_t n);

// exp(x) for the softmax and GELU: float uses a branch-free polynomial (Cephes expf) that the
// compiler vectorises, as libm's expf is not; double uses std::exp. Inputs are clamped to
// [-87, 88]: below, the result is ~1e-38 instead of a denormal or 0; above, ~1.6e38, not inf.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Round x / ln2 to the nearest integer n with the 1.5 * 2^23 trick (floor() needs SSE4.1 to
  // vectorise): the low mantissa bits of t hold n.
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  const std::int32_t ni = std::bit_cast<std::int32_t>(t) - std::bit_cast<std::int32_t>(12582912.0f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // x - n ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((ni + 127) << 23);
}
inline double fast_exp(double x) {
  return std::exp(x);
}

}  // namespace mixsim::cpu
