// The fused softmax + cross-entropy of the CPU backend: one pass per row turns logits into the
// row's loss and, for training, into dlogits in place; the probabilities are never stored.
// The kernels do not read floating-point exception flags; without trapping math the compiler
// can vectorise the clamps of fast_exp (the results are unchanged).
#pragma GCC optimize("no-trapping-math")

#include <cmath>

#include "mixsim/backend/cpu_kernels.hpp"
#include "parallel.hpp"

namespace mixsim::cpu {

namespace {

template <class F>
F row_max(const F* x, int V) {
  F mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < V; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

// Loss of one row; with `write`, the row becomes dloss * (softmax - onehot), padding zeroed.
template <class F>
[[gnu::target_clones("avx2", "default")]] F classify_row(F* row, int target, F dloss, bool write,
                                                         int V, int Vp) {
  const F mx = row_max(row, V);
  const F target_logit = row[target];
  F sum = 0;
  if (write) {
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) {
      row[j] = fast_exp(row[j] - mx);
      sum += row[j];
    }
    const F k = dloss / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) row[j] *= k;
    row[target] -= dloss;
    for (int j = V; j < Vp; ++j) row[j] = F(0);
  } else {
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += fast_exp(row[j] - mx);
  }
  return std::log(sum) + mx - target_logit;
}

}  // namespace

template <class F>
void classifier(F* logits, F* losses, const int* targets, F dloss, bool write_dlogits, int N, int V,
                int Vp) {
  const int threads = std::size_t(N) * V >= kParallelMin ? omp_get_max_threads() : 1;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int n = 0; n < N; ++n) {
    F* row = logits + std::size_t(n) * Vp;
    if (targets[n] < 0) {  // a skipped position: no loss, no gradient
      losses[n] = F(0);
      if (write_dlogits)
        for (int j = 0; j < Vp; ++j) row[j] = F(0);
      continue;
    }
    losses[n] = classify_row(row, targets[n], dloss, write_dlogits, V, Vp);
  }
}

template void classifier<float>(float*, float*, const int*, float, bool, int, int, int);
template void classifier<double>(double*, double*, const int*, double, bool, int, int, int);

}  // namespace mixsim::cpu
