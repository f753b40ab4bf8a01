// bench_train_throughput: training speed of the GPT on the CPU backend, against the machine's
// measured sgemm peak. Usage:
//   OMP_NUM_THREADS=2 build/bench/bench_train_throughput [--configs tiny,small,gpt2] [--steps N]
//                                                        [--trials K] [--profile]
// --steps: timed steps per trial; --trials: the best trial is reported; --profile: time per op.
// Configs: tiny (4 layers, 4 heads, 128 channels, vocab 256, T 64, B 4), small (6/6/384, vocab
// 256, T 256, B 8), gpt2 (the GPT-2 124M shape 12/12/768, vocab 50257, T 1024, B 1; slow).
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "timed_backend.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/core/timer.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/model/optimizer.hpp"

using mixsim::bench::flops_per_token;
using mixsim::bench::TimedBackend;

namespace {

struct BenchConfig {
  const char* name;
  mixsim::ModelConfig model;
  int batch;
  int steps;   // timed steps per trial (after one warm-up step)
  int trials;  // the best trial is reported
};

const BenchConfig kConfigs[] = {
    {"tiny", {4, 4, 128, 64, 256}, 4, 50, 5},
    {"small", {6, 6, 384, 256, 256}, 8, 4, 3},
    {"gpt2", {12, 12, 768, 1024, 50257}, 1, 2, 1},
};

struct Trial {
  double seconds = 0, fwd = 0, bwd = 0, opt = 0;
};

void run(const BenchConfig& cfg, int steps, int trials, double peak, bool profile) {
  auto cpu = mixsim::make_cpu_backend();
  TimedBackend timed(*cpu);
  mixsim::Backend* backend = profile ? static_cast<mixsim::Backend*>(&timed) : cpu.get();
  mixsim::Gpt model(cfg.model, *backend, cfg.batch);
  model.init(1);
  mixsim::AdamW opt(model.layout(), *backend);
  const mixsim::OptimConfig oc;
  const int B = cfg.batch, T = cfg.model.context;
  std::vector<int> tokens(std::size_t(B) * T + 1);
  mixsim::Rng rng(7);
  for (auto& t : tokens) t = int(rng.below(std::uint64_t(cfg.model.vocab_size)));
  float loss = 0;
  auto step = [&](Trial& t) {
    model.zero_grad();
    {
      mixsim::ScopedTimer s(t.fwd);
      loss = model.forward(tokens.data(), tokens.data() + 1, B, T);
    }
    {
      mixsim::ScopedTimer s(t.bwd);
      model.backward();
    }
    mixsim::ScopedTimer s(t.opt);
    model.update(opt, 1e-4, oc);
  };
  Trial warmup;
  step(warmup);  // first touch of the activations and the moments
  timed.reset();
  // The best of several trials: on a shared machine a trial can lose a core for a while.
  Trial best;
  for (int k = 0; k < trials; ++k) {
    Trial t;
    mixsim::Stopwatch watch;
    for (int i = 0; i < steps; ++i) step(t);
    t.seconds = watch.seconds();
    if (k == 0 || t.seconds < best.seconds) best = t;
  }
  const double tokens_per_s = double(B) * T * steps / best.seconds;
  const double gflops = tokens_per_s * flops_per_token(cfg.model) / 1e9;
  std::printf(
      "%-6s L=%d NH=%d C=%d T=%d V=%d B=%d params=%.2fM, best of %d x %d steps, loss %.3f\n",
      cfg.name, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, T, cfg.model.vocab_size, B,
      double(model.layout().total()) / 1e6, trials, steps, double(loss));
  std::printf(
      "       %.0f tokens/s  %.1f GFLOP/s  %.1f%% of peak  (per step: forward %.1f ms, "
      "backward %.1f ms, adamw %.1f ms)\n",
      tokens_per_s, gflops, 100.0 * gflops / peak, 1e3 * best.fwd / steps, 1e3 * best.bwd / steps,
      1e3 * best.opt / steps);
  if (profile) timed.print(steps * trials);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string configs = "tiny,small";
  int steps = 0, trials = 0;
  bool profile = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--configs") && i + 1 < argc) {
      configs = argv[++i];
    } else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--trials") && i + 1 < argc) {
      trials = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--profile")) {
      profile = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--configs tiny,small,gpt2] [--steps N] [--trials K] [--profile]\n",
                   argv[0]);
      return 2;
    }
  }
  const double peak = mixsim::bench::measured_peak_gflops();
  std::printf("threads %d, sgemm peak (2048^3) %.1f GFLOP/s\n", omp_get_max_threads(), peak);
  std::printf(
      "FLOPs/token = 6*(L*(12C^2+9C) + V*C) + 6*L*T*C (matrix weights + causal attention)\n");
  for (const auto& cfg : kConfigs) {
    if (("," + configs + ",").find(std::string(",") + cfg.name + ",") == std::string::npos)
      continue;
    run(cfg, steps > 0 ? steps : cfg.steps, trials > 0 ? trials : cfg.trials, peak, profile);
  }
}
