// bench_averaging: the memory bandwidth of averaging k models (Backend::weighted_sum, the op of
// merge-eval's collective average) against a plain copy of the same buffers in the same run.
// Bytes counted: k buffers read + 1 written for the average; 1 read + 1 written for a copy. The
// yardstick is a copy of a buffer much larger than the caches (the memory bandwidth a copy
// reaches); a copy of one model of each size is printed too (small models copy within the caches).
// Target (merge-eval issue): averaging >= 70% of the copy bandwidth.
//   OMP_NUM_THREADS=2 build/bench/bench_averaging [--repeats R] [--large-mib M]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "args.hpp"
#include "mixsim/backend/ops.hpp"
#include "mixsim/model/layout.hpp"

using namespace mixsim;

namespace {

template <class F>
double best_seconds(int repeats, F&& f) {
  f();  // warm: page faults and caches
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// A copy with the backend's threads, each thread copying its contiguous share.
void parallel_copy(float* out, const float* in, std::size_t n) {
#pragma omp parallel
  {
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t p = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t first = n * t / p, last = n * (t + 1) / p;
    std::memcpy(out + first, in + first, (last - first) * sizeof(float));
  }
}

struct Buffers {
  std::vector<DeviceBuffer<float>> inputs;
  std::vector<const float*> pointers;
  DeviceBuffer<float> out;
};

Buffers make_buffers(Backend& backend, std::size_t n, int k) {
  Buffers b;
  std::vector<float> host(n);
  for (int j = 0; j < k; ++j) {
    for (std::size_t i = 0; i < n; ++i)
      host[i] = static_cast<float>((i * 7 + static_cast<std::size_t>(j)) % 13) * 0.01f;
    b.inputs.emplace_back(backend, n);
    backend.upload(b.inputs.back().get(), host.data(), n * sizeof(float));
    b.pointers.push_back(b.inputs.back().get());
  }
  b.out = DeviceBuffer<float>(backend, n);
  backend.zero(b.out.get(), n * sizeof(float));
  return b;
}

// GB/s of a copy of n floats (read + write): the better of one memcpy and a copy split over
// the OpenMP threads.
double copy_gbs(Backend& backend, std::size_t n, int repeats) {
  auto b = make_buffers(backend, n, 1);
  const double bytes = 2.0 * static_cast<double>(n) * sizeof(float);
  const double t_memcpy =
      best_seconds(repeats, [&] { std::memcpy(b.out.get(), b.pointers[0], n * sizeof(float)); });
  const double t_split =
      best_seconds(repeats, [&] { parallel_copy(b.out.get(), b.pointers[0], n); });
  return bytes / std::min(t_memcpy, t_split) / 1e9;
}

void run(Backend& backend, const std::string& label, std::size_t n, int repeats,
         double memory_gbs) {
  auto b = make_buffers(backend, n, 8);
  const double bytes = static_cast<double>(n) * sizeof(float);
  std::printf("%-28s %8.1f MiB per model (a copy of one: %6.2f GB/s)\n", label.c_str(),
              bytes / (1 << 20), copy_gbs(backend, n, repeats));
  for (int k : {2, 4, 8}) {
    std::vector<float> w(static_cast<std::size_t>(k), 1.0f / static_cast<float>(k));
    const double t = best_seconds(
        repeats, [&] { backend.weighted_sum(b.out.get(), b.pointers.data(), w.data(), k, n); });
    const double gbs = (k + 1) * bytes / t / 1e9;
    std::printf("  average of k=%d: %7.2f GB/s = %5.1f%% of the copy bandwidth (%.2f ms)\n", k,
                gbs, 100.0 * gbs / memory_gbs, t * 1e3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 10;
  std::size_t large_mib = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--repeats"))
      repeats = int(bench::int_arg("bench_averaging", "--repeats", argv[i + 1], 1, 10000));
    if (!std::strcmp(argv[i], "--large-mib"))
      large_mib =
          std::size_t(bench::int_arg("bench_averaging", "--large-mib", argv[i + 1], 1, 1 << 20));
  }
  auto backend = make_cpu_backend();
  const std::size_t large = large_mib * (1 << 20) / sizeof(float);
  // The yardstick: a copy far larger than the caches, i.e. the machine's memory bandwidth.
  const double memory_gbs = copy_gbs(*backend, large, std::max(3, repeats / 3));
  std::printf(
      "bench_averaging: %d OpenMP thread(s), best of %d; bytes = (k read + 1 written) x model\n"
      "copy bandwidth (%zu MiB buffer, read + write): %.2f GB/s\n",
      omp_get_max_threads(), repeats, large_mib, memory_gbs);
  const ModelConfig tiny{4, 4, 128, 64, 256}, small{6, 6, 384, 256, 256};
  run(*backend, "tiny model (0.8M params)", ParamLayout(tiny).total(), repeats, memory_gbs);
  run(*backend, "small model (10.8M params)", ParamLayout(small).total(), repeats, memory_gbs);
  run(*backend, "large buffer", large, std::max(3, repeats / 3), memory_gbs);
  return 0;
}
