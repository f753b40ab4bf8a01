// Elementwise and row-wise layers of the CPU backend: embedding, LayerNorm, GELU, residual.
// The kernels do not read floating-point exception flags; without trapping math the compiler
// can vectorise the clamps of fast_exp (the results are unchanged).
#pragma GCC optimize("no-trapping-math")

#include <cmath>

#include "mixsim/backend/cpu_kernels.hpp"
#include "parallel.hpp"

namespace mixsim::cpu {

namespace {

// Threads for work on `n` elements: one below kParallelMin, where a fork costs more than it saves.
int threads_for(std::size_t n) {
  return n >= kParallelMin ? omp_get_max_threads() : 1;
}

constexpr double kLayerNormEps = 1e-5;

}  // namespace

template <class F>
void encoder_forward(F* out, const int* tokens, const F* wte, const F* wpe, int B, int T, int C) {
  const int rows = B * T;
#pragma omp parallel for schedule(static) num_threads(threads_for(std::size_t(rows) * C))
  for (int bt = 0; bt < rows; ++bt) {
    F* o = out + std::size_t(bt) * C;
    const F* e = wte + std::size_t(tokens[bt]) * C;
    const F* p = wpe + std::size_t(bt % T) * C;
    for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
  }
}

template <class F>
void encoder_backward(F* dwte, F* dwpe, const F* dout, const int* tokens, int B, int T, int C) {
  // Tokens repeat, so rows of dwte receive several adds: each thread owns a block of channels and
  // visits the positions in order, which fixes the order of every sum.
#pragma omp parallel num_threads(threads_for(std::size_t(B) * T * C))
  {
    const Range r = split_range(C, omp_get_num_threads(), omp_get_thread_num());
    for (int bt = 0; bt < B * T; ++bt) {
      const F* d = dout + std::size_t(bt) * C;
      F* gte = dwte + std::size_t(tokens[bt]) * C;
      F* gpe = dwpe + std::size_t(bt % T) * C;
      for (std::size_t c = r.begin; c < r.end; ++c) {
        gte[c] += d[c];
        gpe[c] += d[c];
      }
    }
  }
}

template <class F>
void layernorm_forward(F* out, F* mean, F* rstd, const F* inp, const F* weight, const F* bias,
                       int N, int C) {
#pragma omp parallel for schedule(static) num_threads(threads_for(std::size_t(N) * C))
  for (int n = 0; n < N; ++n) {
    const F* x = inp + std::size_t(n) * C;
    F* o = out + std::size_t(n) * C;
    F sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const F m = sum / F(C);
    F var = 0;
#pragma omp simd reduction(+ : var)
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    const F s = F(1) / std::sqrt(var / F(C) + F(kLayerNormEps));
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    if (mean) mean[n] = m;
    if (rstd) rstd[n] = s;
  }
}

template <class F>
void layernorm_backward(F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                        const F* mean, const F* rstd, int N, int C) {
  const int threads = threads_for(std::size_t(N) * C);
  // dinp: rows are independent.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int n = 0; n < N; ++n) {
    const F* x = inp + std::size_t(n) * C;
    const F* d = dout + std::size_t(n) * C;
    F* dx = dinp + std::size_t(n) * C;
    const F m = mean[n], s = rstd[n];
    F sum_dnorm = 0, sum_dnorm_norm = 0;
#pragma omp simd reduction(+ : sum_dnorm, sum_dnorm_norm)
    for (int c = 0; c < C; ++c) {
      const F dnorm = weight[c] * d[c];
      sum_dnorm += dnorm;
      sum_dnorm_norm += dnorm * (x[c] - m) * s;
    }
    const F mean_dnorm = sum_dnorm / F(C), mean_dnorm_norm = sum_dnorm_norm / F(C);
    for (int c = 0; c < C; ++c) {
      const F norm = (x[c] - m) * s;
      dx[c] += s * (weight[c] * d[c] - mean_dnorm - norm * mean_dnorm_norm);
    }
  }
  // dweight, dbias: sums over rows; each thread owns a block of channels, rows in order.
#pragma omp parallel num_threads(threads)
  {
    const Range r = split_range(C, omp_get_num_threads(), omp_get_thread_num());
    for (int n = 0; n < N; ++n) {
      const F* x = inp + std::size_t(n) * C;
      const F* d = dout + std::size_t(n) * C;
      const F m = mean[n], s = rstd[n];
      for (std::size_t c = r.begin; c < r.end; ++c) {
        dweight[c] += d[c] * (x[c] - m) * s;
        dbias[c] += d[c];
      }
    }
  }
}

namespace {

// GELU, tanh form: 0.5 x (1 + tanh(u)), u = k (x + 0.044715 x^3), k = sqrt(2/pi), computed as
// x s with s = 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): the same function, without the cancellation
// in 1 + tanh(u) for negative u, which for x below about -4 left the tiny result wrong by percents
// (many bf16 steps; kernels/gelu.cu computes it the same way). Its derivative is
// s + x s' du/dx with s' = 2 s (1 - s).
template <class F>
constexpr F kGeluScale = F(0.7978845608028654);
template <class F>
constexpr F kGeluCube = F(0.044715);

// exp(-2u) for the GELU at x (fast_exp clamps, so the float result is finite).
template <class F>
F gelu_exp(F x) {
  return fast_exp(F(-2) * kGeluScale<F> * (x + kGeluCube<F> * x * x * x));
}

// Chunks of the GELU loops, cloned for AVX2: the chunk is where the vector loop lives (an OpenMP
// region's body is a separate function that a clone of its caller would not cover).
template <class F>
[[gnu::target_clones("avx2", "default")]] void gelu_forward_chunk(F* out, const F* inp,
                                                                  std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const F x = inp[i];
    out[i] = x / (F(1) + gelu_exp(x));
  }
}

template <class F>
[[gnu::target_clones("avx2", "default")]] void gelu_backward_chunk(F* dinp, const F* inp,
                                                                   const F* dout, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const F x = inp[i];
    const F s = F(1) / (F(1) + gelu_exp(x));
    const F du = kGeluScale<F> * (F(1) + F(3) * kGeluCube<F> * x * x);
    const F grad = s + F(2) * x * s * (F(1) - s) * du;
    dinp[i] = grad * dout[i];
  }
}

// Runs fn(begin, length) over `threads` contiguous parts of [0, n).
template <class Fn>
void for_chunks(std::size_t n, Fn&& fn) {
#pragma omp parallel num_threads(threads_for(n))
  {
    const Range r = split_range(n, omp_get_num_threads(), omp_get_thread_num());
    if (r.end > r.begin) fn(r.begin, r.end - r.begin);
  }
}

}  // namespace

template <class F>
void gelu_forward(F* out, const F* inp, std::size_t n) {
  for_chunks(n, [&](std::size_t i, std::size_t len) { gelu_forward_chunk(out + i, inp + i, len); });
}

template <class F>
void gelu_backward(F* dinp, const F* inp, const F* dout, std::size_t n) {
  for_chunks(n, [&](std::size_t i, std::size_t len) {
    gelu_backward_chunk(dinp + i, inp + i, dout + i, len);
  });
}

template <class F>
void residual_forward(F* out, const F* a, const F* b, std::size_t n) {
#pragma omp parallel for simd schedule(static) num_threads(threads_for(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

#define MIXSIM_INSTANTIATE(F)                                                             \
  template void encoder_forward<F>(F*, const int*, const F*, const F*, int, int, int);    \
  template void encoder_backward<F>(F*, F*, const F*, const int*, int, int, int);         \
  template void layernorm_forward<F>(F*, F*, F*, const F*, const F*, const F*, int, int); \
  template void layernorm_backward<F>(F*, F*, F*, const F*, const F*, const F*, const F*, \
                                      const F*, int, int);                                \
  template void gelu_forward<F>(F*, const F*, std::size_t);                               \
  template void gelu_backward<F>(F*, const F*, const F*, std::size_t);                    \
  template void residual_forward<F>(F*, const F*, const F*, std::size_t);
MIXSIM_INSTANTIATE(float)
MIXSIM_INSTANTIATE(double)
#undef MIXSIM_INSTANTIATE

}  // namespace mixsim::cpu
