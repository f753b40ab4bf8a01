// Whole-buffer arithmetic of the CPU backend: AdamW, the gradient norm, model averaging, scaling.
#include <cmath>
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

template <class F>
void weighted_sum(F* out, const F* const* inputs, const F* weights, int k, std::size_t n) {
  constexpr std::size_t kBlock = 2048;  // a block of out stays in L1 while the inputs stream
  const std::size_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(threads_for(n))
  for (std::size_t blk = 0; blk < blocks; ++blk) {
    const std::size_t begin = blk * kBlock, len = std::min(n, begin + kBlock) - begin;
    F acc[kBlock];
    const F w0 = weights[0];
    const F* in0 = inputs[0] + begin;
    for (std::size_t i = 0; i < len; ++i) acc[i] = w0 * in0[i];
    for (int j = 1; j < k; ++j) {
      const F w = weights[j];
      const F* in = inputs[j] + begin;
      for (std::size_t i = 0; i < len; ++i) acc[i] += w * in[i];
    }
    F* o = out + begin;
    for (std::size_t i = 0; i < len; ++i) o[i] = acc[i];
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
