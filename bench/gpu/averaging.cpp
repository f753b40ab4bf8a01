// bench_gpu_averaging: merge-eval's parameter averaging (Backend::weighted_sum of k models) on
// the CUDA backend, against the same device's copy bandwidth (Backend::copy, a device-to-device
// cudaMemcpyAsync) measured in the same run. Bytes counted: k reads + 1 write per element for the
// average, 1 read + 1 write for the copy. Usage:
//   build/bench/bench_gpu_averaging [--floats N] [--repeat R]
// N defaults to the GPT-2 124M parameter count (124,475,904 floats, 498 MB per model).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "args.hpp"
#include "mixsim/backend/device.hpp"
#include "mixsim/backend/ops.hpp"
#include "mixsim/core/timer.hpp"

namespace {

// The best of `repeat` timed runs of fn (after one warm-up), in seconds.
template <class Fn>
double best_seconds(mixsim::Backend& gpu, int repeat, Fn&& fn) {
  fn();
  gpu.synchronize();
  double best = 1e30;
  for (int r = 0; r < repeat; ++r) {
    mixsim::Stopwatch w;
    fn();
    gpu.synchronize();
    best = std::min(best, w.seconds());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = 124475904;
  int repeat = 10;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--floats") && i + 1 < argc) {
      n = std::size_t(
          mixsim::bench::int_arg("bench_gpu_averaging", "--floats", argv[++i], 1, 1LL << 34));
    } else if (!std::strcmp(argv[i], "--repeat") && i + 1 < argc) {
      repeat = int(mixsim::bench::int_arg("bench_gpu_averaging", "--repeat", argv[++i], 1, 10000));
    } else {
      std::fprintf(stderr, "usage: %s [--floats N] [--repeat R]\n", argv[0]);
      return 2;
    }
  }
  const auto avail = mixsim::gpu_availability();
  if (avail.count == 0) {
    std::fprintf(stderr, "bench_gpu_averaging: no usable GPU: %s\n", avail.reason.c_str());
    return 2;
  }
  try {
    auto gpu = mixsim::make_backend("cuda");
    constexpr int kMaxK = 8;
    std::vector<mixsim::DeviceBuffer<float>> models;
    for (int i = 0; i < kMaxK + 1; ++i) {
      models.emplace_back(*gpu, n);
      gpu->zero(models.back().get(), n * sizeof(float));
    }
    const double bytes = double(n) * sizeof(float);
    const double copy_s = best_seconds(*gpu, repeat, [&] {
      gpu->copy(models[kMaxK].get(), models[0].get(), n * sizeof(float));
    });
    const double copy_gbs = 2 * bytes / copy_s / 1e9;
    std::printf("device: %s; %zu floats per model (%.0f MB), best of %d\n", avail.name.c_str(), n,
                bytes / 1e6, repeat);
    std::printf("copy (read + write)        %8.1f GB/s\n", copy_gbs);
    for (int k : {2, 4, 8}) {
      std::vector<const float*> inputs;
      std::vector<float> weights(std::size_t(k), 1.0f / float(k));
      for (int i = 0; i < k; ++i) inputs.push_back(models[std::size_t(i)].get());
      const double s = best_seconds(*gpu, repeat, [&] {
        gpu->weighted_sum(models[kMaxK].get(), inputs.data(), weights.data(), k, n);
      });
      const double gbs = double(k + 1) * bytes / s / 1e9;
      std::printf("average of k=%d (%d reads + write) %8.1f GB/s  %5.1f%% of copy\n", k, k, gbs,
                  100.0 * gbs / copy_gbs);
      std::printf("RESULT averaging k=%d gbs=%.1f copy_gbs=%.1f pct=%.1f\n", k, gbs, copy_gbs,
                  100.0 * gbs / copy_gbs);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_averaging: %s\n", e.what());
    return 1;
  }
}
