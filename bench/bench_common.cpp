#include "bench_common.hpp"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "mixsim/core/timer.hpp"

namespace mixsim::bench {

double sgemm_gflops(int m, int n, int k, int repeats) {
  std::vector<float> a(static_cast<std::size_t>(m) * k), b(static_cast<std::size_t>(n) * k),
      c(static_cast<std::size_t>(m) * n);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 13) * 0.01f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i % 7) * 0.02f;
  auto run = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k,
                0.0f, c.data(), n);
  };
  run();  // warm-up: page faults, thread start
  const double flops = 2.0 * m * n * k;
  const int inner = std::max(1, static_cast<int>(2e9 / flops));
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    Stopwatch w;
    for (int i = 0; i < inner; ++i) run();
    best = std::min(best, w.seconds() / inner);
  }
  return flops / best / 1e9;
}

double measured_peak_gflops() { return sgemm_gflops(2048, 2048, 2048, 5); }

}  // namespace mixsim::bench
