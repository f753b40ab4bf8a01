// Whole-buffer arithmetic of the CPU backend: AdamW, the gradient norm, model averaging, scaling.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef __SSE2__
#include <immintrin.h>
#endif

#include "mixsim/backend/cpu_kernels.hpp"
#include "parallel.hpp"

namespace mixsim::cpu {

namespace {

int threads_for(std::size_t n) {
  return n >= kParallelMin ? omp_get_max_threads() : 1;
}

// sum_squares adds fixed blocks of this many elements, then the block sums in order: the result
// is the same for every thread count.
constexpr std::size_t kSumBlock = 8192;

}  // namespace

namespace {

// The AdamW update of elements [0, n), in the same order of operations for every scalar type.
template <class F>
struct AdamWMath {
  F b1, b2, lr, eps, wd, gs, inv_bc1, inv_bc2;
  explicit AdamWMath(const AdamWArgs& a)
      : b1(a.beta1),
        b2(a.beta2),
        lr(a.lr),
        eps(a.eps),
        wd(a.weight_decay),
        gs(a.grad_scale),
        inv_bc1(F(1) / F(a.bias_correction1)),
        inv_bc2(F(1) / F(a.bias_correction2)) {}
  void update(F* params, F* m, F* v, const F* grads, std::size_t i) const {
    const F g = grads[i] * gs;
    const F mi = b1 * m[i] + (F(1) - b1) * g;
    const F vi = b2 * v[i] + (F(1) - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const F update = (mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps);
    params[i] -= lr * (update + wd * params[i]);
  }
};

// The compiler will not vectorise std::sqrt (it must be able to set errno), so the float chunk
// spells the same operations, in the same order, with SSE (part of every x86-64 CPU).
[[gnu::target_clones("avx2", "default")]] void adamw_chunk(float* params, float* m, float* v,
                                                           const float* grads, std::size_t n,
                                                           const AdamWMath<float>& a) {
  std::size_t i = 0;
#ifdef __SSE2__
  const __m128 b1 = _mm_set1_ps(a.b1), b2 = _mm_set1_ps(a.b2), lr = _mm_set1_ps(a.lr);
  const __m128 one_b1 = _mm_set1_ps(1.0f - a.b1), one_b2 = _mm_set1_ps(1.0f - a.b2);
  const __m128 eps = _mm_set1_ps(a.eps), wd = _mm_set1_ps(a.wd), gs = _mm_set1_ps(a.gs);
  const __m128 inv_bc1 = _mm_set1_ps(a.inv_bc1), inv_bc2 = _mm_set1_ps(a.inv_bc2);
  for (; i + 4 <= n; i += 4) {
    const __m128 g = _mm_mul_ps(_mm_loadu_ps(grads + i), gs);
    const __m128 mi = _mm_add_ps(_mm_mul_ps(b1, _mm_loadu_ps(m + i)), _mm_mul_ps(one_b1, g));
    const __m128 vi =
        _mm_add_ps(_mm_mul_ps(b2, _mm_loadu_ps(v + i)), _mm_mul_ps(_mm_mul_ps(one_b2, g), g));
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
    const __m128 update =
        _mm_div_ps(_mm_mul_ps(mi, inv_bc1), _mm_add_ps(_mm_sqrt_ps(_mm_mul_ps(vi, inv_bc2)), eps));
    const __m128 p = _mm_loadu_ps(params + i);
    _mm_storeu_ps(params + i, _mm_sub_ps(p, _mm_mul_ps(lr, _mm_add_ps(update, _mm_mul_ps(wd, p)))));
  }
#endif
  for (; i < n; ++i) a.update(params, m, v, grads, i);
}

void adamw_chunk(double* params, double* m, double* v, const double* grads, std::size_t n,
                 const AdamWMath<double>& a) {
  for (std::size_t i = 0; i < n; ++i) a.update(params, m, v, grads, i);
}

}  // namespace

template <class F>
void adamw(F* params, F* m, F* v, const F* grads, std::size_t n, const AdamWArgs& args) {
  const AdamWMath<F> a(args);
#pragma omp parallel num_threads(threads_for(n))
  {
    const Range r = split_range(n, omp_get_num_threads(), omp_get_thread_num());
    adamw_chunk(params + r.begin, m + r.begin, v + r.begin, grads + r.begin, r.end - r.begin, a);
  }
}

template <class F>
double sum_squares(const F* x, std::size_t n) {
  const std::size_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static) num_threads(threads_for(n))
  for (std::size_t blk = 0; blk < blocks; ++blk) {
    const std::size_t begin = blk * kSumBlock, end = std::min(n, begin + kSumBlock);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (std::size_t i = begin; i < end; ++i) s += double(x[i]) * double(x[i]);
    partial[blk] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

// Writes len values to dst with non-temporal (streaming) stores where the ISA has them: the
// output of a large average is not read again soon, and a streaming store skips the read for
// ownership that a normal store of an uncached line costs (a third more traffic for k = 2).
template <class F>
void store_streaming(F* dst, const F* src, std::size_t len) {
#if defined(__SSE2__)
  std::size_t i = 0;
  for (; i < len && reinterpret_cast<std::uintptr_t>(dst + i) % 16 != 0; ++i) dst[i] = src[i];
  constexpr std::size_t kLanes = 16 / sizeof(F);
  for (; i + kLanes <= len; i += kLanes) {
    if constexpr (std::is_same_v<F, float>)
      _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    else
      _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
  }
  for (; i < len; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, len * sizeof(F));
#endif
}

// Memory-bound: k input streams and one output. Per block of 64 KiB (a thread's accumulator,
// which stays in L2) the first input's pass sets the accumulator, each further pass adds up to
// four inputs (five streams at once, the accumulator re-read from L2 once per four inputs), and
// the block goes to `out` once, with streaming stores when the output is larger than the caches.
// Memory traffic is then k reads + 1 write, what the benchmark counts. Per element the sum is
// formed in input order 0..k-1, so the result depends neither on the blocking nor on the thread
// count; `out` may alias input 0 (all of a block's inputs are read before it is written).
// bench/averaging: 58-79% of the copy bandwidth for the one-input-per-pass loop this replaced,
// see docs/benchmarks.md for this one.
template <class F>
void weighted_sum(F* out, const F* const* inputs, const F* weights, int k, std::size_t n) {
  constexpr std::size_t kBlock = 65536 / sizeof(F);
  constexpr std::size_t kStreamBytes = std::size_t{16} << 20;  // beyond this, out is not cached
  const bool streaming = n * sizeof(F) > kStreamBytes;
  const std::size_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(threads_for(n))
  {
    std::vector<F> acc_buffer(kBlock);
    F* acc = acc_buffer.data();
#pragma omp for schedule(static)
    for (std::size_t blk = 0; blk < blocks; ++blk) {
      const std::size_t begin = blk * kBlock, len = std::min(n, begin + kBlock) - begin;
      {
        const F w0 = weights[0];
        const F* x0 = inputs[0] + begin;
        for (std::size_t i = 0; i < len; ++i) acc[i] = w0 * x0[i];
      }
      int j = 1;
      for (; j + 3 < k; j += 4) {
        const F *x0 = inputs[j] + begin, *x1 = inputs[j + 1] + begin, *x2 = inputs[j + 2] + begin,
                *x3 = inputs[j + 3] + begin;
        const F w0 = weights[j], w1 = weights[j + 1], w2 = weights[j + 2], w3 = weights[j + 3];
        for (std::size_t i = 0; i < len; ++i) {
          F v = acc[i];
          v += w0 * x0[i];
          v += w1 * x1[i];
          v += w2 * x2[i];
          v += w3 * x3[i];
          acc[i] = v;
        }
      }
      for (; j < k; ++j) {
        const F w = weights[j];
        const F* x = inputs[j] + begin;
        for (std::size_t i = 0; i < len; ++i) acc[i] += w * x[i];
      }
      if (streaming)
        store_streaming(out + begin, acc, len);
      else
        std::memcpy(out + begin, acc, len * sizeof(F));
    }
#if defined(__SSE2__)
    // Streaming stores are weakly ordered: each thread fences its own before the barrier.
    if (streaming) _mm_sfence();
#endif
  }
}

template <class F>
void scale(F* x, F alpha, std::size_t n) {
#pragma omp parallel for simd schedule(static) num_threads(threads_for(n))
  for (std::size_t i = 0; i < n; ++i) x[i] *= alpha;
}

#define MIXSIM_INSTANTIATE(F)                                                     \
  template void adamw<F>(F*, F*, F*, const F*, std::size_t, const AdamWArgs&);    \
  template double sum_squares<F>(const F*, std::size_t);                          \
  template void weighted_sum<F>(F*, const F* const*, const F*, int, std::size_t); \
  template void scale<F>(F*, F, std::size_t);
MIXSIM_INSTANTIATE(float)
MIXSIM_INSTANTIATE(double)
#undef MIXSIM_INSTANTIATE

}  // namespace mixsim::cpu
