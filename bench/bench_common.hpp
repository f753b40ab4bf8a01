// Shared by the benchmarks: this machine's practical fp32 peak, measured with a large sgemm
// through the project's BLAS in the same run, so every GFLOP/s figure has its yardstick.
#pragma once

namespace mixsim::bench {

// Best-of-`repeats` GFLOP/s of C = A * B^T for square n x n fp32 matrices (row-major).
double sgemm_gflops(int m, int n, int k, int repeats);

// The practical peak: sgemm_gflops(2048, 2048, 2048, 5) with the current OpenMP thread count.
double measured_peak_gflops();

}  // namespace mixsim::bench
