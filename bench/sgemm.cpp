// bench_sgemm: fp32 matrix-product throughput of the project's BLAS on the transformer's shapes
// and the 2048^3 peak. Usage: OMP_NUM_THREADS=N build/bench/bench_sgemm
#include <omp.h>

#include <cstdio>

#include "bench_common.hpp"

int main() {
  struct Shape {
    int m, n, k;
    const char* what;
  };
  const Shape shapes[] = {
      {2048, 2048, 2048, "peak (square)"},
      {1024, 1536, 384, "small: MLP up (B*T=1024, C=384)"},
      {1024, 384, 1536, "small: MLP down"},
      {1024, 384, 384, "small: attention proj"},
      {256, 512, 128, "tiny: MLP up (B*T=256, C=128)"},
      {256, 128, 512, "tiny: MLP down"},
      {256, 384, 128, "tiny: qkv"},
  };
  std::printf("threads %d\n%-36s %6s %6s %6s %10s\n", omp_get_max_threads(), "shape", "M", "N",
              "K", "GFLOP/s");
  for (const auto& s : shapes)
    std::printf("%-36s %6d %6d %6d %10.1f\n", s.what, s.m, s.n, s.k,
                mixsim::bench::sgemm_gflops(s.m, s.n, s.k, 5));
}
