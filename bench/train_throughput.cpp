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
#include "mixsim/core/rng.hpp"
#include "mixsim/core/timer.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/model/optimizer.hpp"

namespace {

// A Backend that forwards every op to another one and adds up the wall time of each op
// (--profile): where a step's time goes, without a profiler.
class TimedBackend final : public mixsim::Backend {
 public:
  explicit TimedBackend(mixsim::Backend& inner) : in_(inner) {}
  std::string_view name() const override { return in_.name(); }
  void* allocate(std::size_t b) override { return in_.allocate(b); }
  void deallocate(void* p) noexcept override { in_.deallocate(p); }
  void upload(void* d, const void* s, std::size_t b) override { in_.upload(d, s, b); }
  void download(void* d, const void* s, std::size_t b) override { in_.download(d, s, b); }
  void copy(void* d, const void* s, std::size_t b) override { in_.copy(d, s, b); }
  void zero(void* p, std::size_t b) override {
    time("zero", [&] { in_.zero(p, b); });
  }
  void synchronize() override { in_.synchronize(); }
  void encoder_forward(float* o, const int* t, const float* a, const float* b, int B, int T,
                       int C) override {
    time("encoder_forward", [&] { in_.encoder_forward(o, t, a, b, B, T, C); });
  }
  void encoder_backward(float* a, float* b, const float* d, const int* t, int B, int T,
                        int C) override {
    time("encoder_backward", [&] { in_.encoder_backward(a, b, d, t, B, T, C); });
  }
  void layernorm_forward(float* o, float* m, float* r, const float* i, const float* w,
                         const float* b, int N, int C) override {
    time("layernorm_forward", [&] { in_.layernorm_forward(o, m, r, i, w, b, N, C); });
  }
  void layernorm_backward(float* di, float* dw, float* db, const float* d, const float* i,
                          const float* w, const float* m, const float* r, int N, int C) override {
    time("layernorm_backward", [&] { in_.layernorm_backward(di, dw, db, d, i, w, m, r, N, C); });
  }
  void matmul_forward(float* o, const float* i, const float* w, const float* b, int N, int C,
                      int OC) override {
    time("matmul_forward", [&] { in_.matmul_forward(o, i, w, b, N, C, OC); });
  }
  void matmul_backward(float* di, float* dw, float* db, const float* d, const float* i,
                       const float* w, int N, int C, int OC) override {
    time("matmul_backward", [&] { in_.matmul_backward(di, dw, db, d, i, w, N, C, OC); });
  }
  void attention_forward(float* o, float* l, const float* q, int B, int T, int C, int NH) override {
    time("attention_forward", [&] { in_.attention_forward(o, l, q, B, T, C, NH); });
  }
  void attention_backward(float* dq, const float* d, const float* q, const float* o, const float* l,
                          int B, int T, int C, int NH) override {
    time("attention_backward", [&] { in_.attention_backward(dq, d, q, o, l, B, T, C, NH); });
  }
  void gelu_forward(float* o, const float* i, std::size_t n) override {
    time("gelu_forward", [&] { in_.gelu_forward(o, i, n); });
  }
  void gelu_backward(float* di, const float* i, const float* d, std::size_t n) override {
    time("gelu_backward", [&] { in_.gelu_backward(di, i, d, n); });
  }
  void residual_forward(float* o, const float* a, const float* b, std::size_t n) override {
    time("residual_forward", [&] { in_.residual_forward(o, a, b, n); });
  }
  void classifier(float* l, float* ls, const int* t, float d, bool w, int N, int V,
                  int Vp) override {
    time("classifier", [&] { in_.classifier(l, ls, t, d, w, N, V, Vp); });
  }
  void adamw(float* p, float* m, float* v, const float* g, std::size_t n,
             const mixsim::AdamWArgs& a) override {
    time("adamw", [&] { in_.adamw(p, m, v, g, n, a); });
  }
  double sum_squares(const float* x, std::size_t n) override {
    double r = 0;
    time("sum_squares", [&] { r = in_.sum_squares(x, n); });
    return r;
  }
  void weighted_sum(float* o, const float* const* in, const float* w, int k,
                    std::size_t n) override {
    in_.weighted_sum(o, in, w, k, n);
  }
  void scale(float* x, float a, std::size_t n) override { in_.scale(x, a, n); }

  void reset() { totals_.clear(); }
  void print(int steps) const {
    for (const auto& [op, s] : totals_)
      std::printf("         %-20s %8.3f ms/step\n", op.c_str(), 1e3 * s / steps);
  }

 private:
  template <class Fn>
  void time(const char* op, Fn&& fn) {
    mixsim::Stopwatch w;
    fn();
    totals_[op] += w.seconds();
  }
  mixsim::Backend& in_;
  std::map<std::string, double> totals_;
};

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

// FLOPs of one training token: 6 per weight that enters a matrix product (2 forward, 4
// backward): per layer 12 C^2 matrix weights and 9 C biases, and the head tied to wte, V x C;
// plus causal attention: per layer and token, q.k and p.v over T/2 keys on average, 2 * 2 *
// (T/2) * C forward and twice that backward. LayerNorm, GELU, softmax and AdamW are not counted.
double flops_per_token(const mixsim::ModelConfig& m) {
  const double L = m.n_layer, C = m.n_embd, T = m.context, V = m.vocab_size;
  const double weights = L * (12 * C * C + 9 * C) + V * C;
  return 6 * weights + 6 * L * T * C;
}

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
    opt.step(model.params(), model.grads(), 1e-4, oc);
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
