// bench_gpu_train: training speed of the GPT on the CUDA backend (fp32 with TF32 off, or
// --backend cuda-bf16: bf16 matrix products), as tokens/s and as MFU against a stated peak. Needs
// only the compute layers, so scripts/gpu-check.sh builds it on a GPU machine without MPI or HDF5.
// Usage:
//   build/bench/bench_gpu_train [--configs gpt2,1.1b] [--backend cuda|cuda-bf16] [--batch B]
//                               [--accum A,...] [--steps N] [--profile] [--profiler-range]
//                               [--peak-tflops P]
// Configs: small (6/6/384, T 256, vocab 256, B 16), gpt2 (the GPT-2 124M shape: 12 layers,
// 12 heads, 768 channels, T 1024, vocab 50257 padded to 50304, B 8), 1.1b (the paper's shape:
// 24 layers, 16 heads, 2048 channels, T 2048, vocab 50257, B 2). A step is zero_grad, forward,
// backward, the global gradient norm and AdamW, as in training. --accum 1,8 times each config
// once per count of micro-batches a step, as training's --train.micro_batch makes them: zero_grad,
// then A forwards and backwards of B sequences each (gradients summed, each loss scaled by 1/A),
// then one norm and one update; its RESULT config is named with the count (gpt2-x8), and it runs
// ceil(N / A) steps, so that every count times about as many micro-batches. --profile times each op
// (with a device synchronisation after each, which slows the step; the totals are reported
// separately).
// --profiler-range brackets the timed steps with cudaProfilerStart/Stop, so that a profiler
// started with its collection off (ncu --profile-from-start off) sees those steps only, not the
// warm-up (scripts/gpu-check.sh, scripts/gpu/ncu_summary.py).
// MFU counts bench::flops_per_token (causal attention at half, as the 6N + attention)
// against --peak-tflops: 989 by default (H100 SXM dense bf16, the yardstick); the fp32
// peak of the same card (67 TFLOP/s without tensor cores) is printed beside it.
// Environment (core/env.hpp: 1 on, 0 off; all five on by default for cuda-bf16, MIXSIM_CUBLASLT
// off by default for cuda): MIXSIM_TC_ATTENTION (cuda-bf16's attention on tensor cores, label
// mixsim-bf16tc, else mixsim-bf16mm), MIXSIM_CUBLASLT (bias and GELU in cuBLASLt epilogues, label
// suffix +lt, with the count of fused and fallen-back products), MIXSIM_BF16_ACTIVATIONS
// (cuda-bf16 stores the tensors only products read in bf16, +act), MIXSIM_BF16_WEIGHTS (the
// products read bf16 weights rounded once per forward pass, +w) and MIXSIM_BF16_OUTPUTS (products
// write bf16 themselves where the model stores bf16, +out); and the opt-ins
// MIXSIM_TC_WIDE_FORWARD=1 (the tensor-core attention forward in blocks of 128 rows, +wide) and
// MIXSIM_BF16_ATTENTION_OUT=1 (attention's output and its gradient stored in bf16, +ao);
// MIXSIM_GELU_EXP2 (on by default for cuda-bf16: the GELU kernel on the hardware's ex2 and
// reciprocal, +gexp2) and MIXSIM_CLASSIFIER_EXP2 (on by default, both backends: the cached
// classifier through exp2, +exp2); the opt-in MIXSIM_LAYERNORM_VEC4=1 (LayerNorm with
// 16-byte accesses, +lnv4), MIXSIM_ATTENTION_HEAVY_FIRST=1 (the tensor-core attention's
// longest blocks first, +hf), MIXSIM_ATTENTION_FUSED_DQ=1 (attention's backward in one kernel,
// +fdq), MIXSIM_BF16_GELU_EPILOGUE=1 (the bf16 fc layer's GELU in cuBLASLt's epilogue, +ge),
// MIXSIM_LAYERNORM_FEEDS_PRODUCT=1 (LayerNorm's backward makes the next projection's bias
// gradient and bf16 operand, +lnf), MIXSIM_CLASSIFIER_TWO_ROWS=1 (the cached classifier two rows
// an SM, +c2r), MIXSIM_BF16_BRANCH_OUTPUTS=1 (the residual branches' ends stored in bf16, +bo),
// MIXSIM_ATTENTION_WGMMA=1 (the attention forward on wgmma where the GPU runs it, +wg),
// MIXSIM_ATTENTION_WGMMA_BACKWARD=1 (its backward's two kernels so, +wgb) and
// MIXSIM_CUBLASLT_TUNE=1 (cuBLASLt's algorithms chosen by timing, +ltt; with
// MIXSIM_CUBLASLT_TUNE_OUT=FILE written to FILE's choices table). The label takes each from the
// backend (cuda_kernel_choices and the Backend queries), not from the environment. The choices
// table that runs without tune (the built-in one, or MIXSIM_CUBLASLT_CHOICES_FILE) is not in the
// label: the cuBLASLt line after each config counts the algorithms it chose, and its mismatches.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef MIXSIM_HAVE_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#endif

#include "args.hpp"
#include "mixsim/backend/cuda.hpp"
#include "mixsim/backend/device.hpp"
#include "mixsim/backend/ops.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/core/timer.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/model/optimizer.hpp"
#include "timed_backend.hpp"

namespace {

struct GpuConfig {
  const char* name;
  mixsim::ModelConfig model;
  int batch;
  int steps;
};

const GpuConfig kConfigs[] = {
    {"small", {6, 6, 384, 256, 256}, 16, 20},
    {"gpt2", {12, 12, 768, 1024, 50257}, 8, 30},
    {"1.1b", {24, 16, 2048, 2048, 50257}, 2, 4},
};

constexpr double kFp32PeakTflops = 67.0;  // H100 SXM, fp32 without tensor cores

// cudaProfilerStart/Stop (--profiler-range); nothing without the CUDA backend.
void profiler_range(bool start) {
#ifdef MIXSIM_HAVE_CUDA
  const cudaError_t rc = start ? cudaProfilerStart() : cudaProfilerStop();
  if (rc != cudaSuccess)
    throw std::runtime_error(std::string("cudaProfiler") + (start ? "Start" : "Stop") + ": " +
                             cudaGetErrorString(rc));
#else
  (void)start;
#endif
}

void run(mixsim::Backend& gpu, const std::string& label, const GpuConfig& cfg, int batch, int accum,
         int steps, double peak_tflops, bool profile, bool range) {
  mixsim::bench::TimedBackend timed(gpu, /*sync=*/true);
  mixsim::Backend& backend = profile ? static_cast<mixsim::Backend&>(timed) : gpu;
  const int B = batch > 0 ? batch : cfg.batch, T = cfg.model.context;
  mixsim::Gpt model(cfg.model, backend, B);
  model.init(1);
  mixsim::AdamW opt(model.layout(), backend);
  const mixsim::OptimConfig oc;
  const std::size_t micro_tokens = std::size_t(B) * T;
  std::vector<int> tokens(micro_tokens * accum + 1);
  mixsim::Rng rng(7);
  for (auto& t : tokens) t = int(rng.below(std::uint64_t(cfg.model.vocab_size)));
  float first_loss = 0, loss = 0;
  double fwd = 0, bwd = 0, upd = 0;
  auto step = [&] {
    mixsim::Stopwatch w;
    model.zero_grad();
    for (int a = 0; a < accum; ++a) {
      const int* micro = tokens.data() + micro_tokens * a;
      // returns the loss: synced
      loss = model.forward(micro, micro + 1, B, T, 1.0f / float(accum));
      fwd += w.lap();
      model.backward();
      backend.synchronize();
      bwd += w.lap();
    }
    model.update(opt, 1e-4, oc);  // the norm comes back to the host: synced
    backend.synchronize();
    upd += w.lap();
  };
  step();  // warm-up: first touch of activations and moments, cuBLAS heuristics
  first_loss = loss;
  step();
  fwd = bwd = upd = 0;
  timed.reset();
  if (range) profiler_range(true);
  mixsim::Stopwatch watch;
  for (int i = 0; i < steps; ++i) step();
  const double seconds = watch.seconds();
  if (range) profiler_range(false);
  const double tokens_per_s = double(micro_tokens) * accum * steps / seconds;
  const double tflops = tokens_per_s * mixsim::bench::flops_per_token(cfg.model) / 1e12;
  std::printf(
      "%-6s L=%d NH=%d C=%d T=%d V=%d B=%d x %d micro-batches, params=%.1fM, %d steps, loss %.3f "
      "-> %.3f\n",
      cfg.name, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, T, cfg.model.vocab_size, B,
      accum, double(model.layout().total()) / 1e6, steps, double(first_loss), double(loss));
  std::printf(
      "       %.0f tokens/s  %.1f TFLOP/s  MFU %.1f%% of %.0f  (%.1f%% of fp32 %.0f)  per step: "
      "forward %.1f ms, backward %.1f ms, optimizer %.1f ms\n",
      tokens_per_s, tflops, 100.0 * tflops / peak_tflops, peak_tflops,
      100.0 * tflops / kFp32PeakTflops, kFp32PeakTflops, 1e3 * fwd / steps, 1e3 * bwd / steps,
      1e3 * upd / steps);
  // One machine-readable line for scripts/gpu-check.sh's table; the config named with its batch
  // where --batch changed it (gpt2-b32) and its micro-batches where there are several (gpt2-x8,
  // gpt2-b16-x4), so that such a row is never read as the config's own.
  std::string config = cfg.name;
  if (B != cfg.batch) config += "-b" + std::to_string(B);
  if (accum > 1) config += "-x" + std::to_string(accum);
  std::printf("RESULT %s %s tokens_per_s=%.0f tflops=%.2f mfu=%.2f\n", label.c_str(),
              config.c_str(), tokens_per_s, tflops, 100.0 * tflops / peak_tflops);
  if (profile) timed.print(steps);
  std::fflush(stdout);
}

// --accum's "1,8" as {1, 8}: each part a count from 1 to 999 (args.hpp refuses any other).
std::vector<int> counts(const std::string& list) {
  std::vector<int> out;
  std::size_t at = 0;
  while (at <= list.size()) {
    const std::size_t end = std::min(list.find(',', at), list.size());
    out.push_back(int(mixsim::bench::int_arg("bench_gpu_train", "--accum",
                                             list.substr(at, end - at).c_str(), 1, 999)));
    at = end + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string configs = "gpt2", backend_name = "cuda";
  int steps = 0, batch = 0;
  std::vector<int> accums{1};
  double peak = 989.0;
  bool profile = false, range = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--configs") && i + 1 < argc) {
      configs = argv[++i];
    } else if (!std::strcmp(argv[i], "--backend") && i + 1 < argc) {
      backend_name = argv[++i];
    } else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = int(mixsim::bench::int_arg("bench_gpu_train", "--steps", argv[++i], 1, 100000));
    } else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) {
      batch = int(mixsim::bench::int_arg("bench_gpu_train", "--batch", argv[++i], 1, 4096));
    } else if (!std::strcmp(argv[i], "--accum") && i + 1 < argc) {
      accums = counts(argv[++i]);
    } else if (!std::strcmp(argv[i], "--peak-tflops") && i + 1 < argc) {
      peak = mixsim::bench::positive_arg("bench_gpu_train", "--peak-tflops", argv[++i]);
    } else if (!std::strcmp(argv[i], "--profile")) {
      profile = true;
    } else if (!std::strcmp(argv[i], "--profiler-range")) {
      range = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--configs small,gpt2,1.1b] [--backend cuda|cuda-bf16] [--batch B] "
                   "[--accum A,...] [--steps N] [--profile] [--profiler-range] [--peak-tflops P]\n",
                   argv[0]);
      return 2;
    }
  }
  const auto avail = mixsim::gpu_availability();
  if (avail.count == 0) {
    std::fprintf(stderr, "bench_gpu_train: no usable GPU: %s\n", avail.reason.c_str());
    return 2;
  }
  std::printf("device: %s; backend %s (%s)\n", avail.name.c_str(), backend_name.c_str(),
              backend_name == "cuda" ? "fp32, TF32 off" : "bf16 matrix products, fp32 otherwise");
  try {
    auto gpu = mixsim::make_backend(backend_name);
    // the kernels the backend chose (MIXSIM_TC_ATTENTION: "bf16tc", else "bf16mm";
    // MIXSIM_TC_WIDE_FORWARD=1: "+wide"; MIXSIM_GELU_EXP2: "+gexp2"; MIXSIM_CLASSIFIER_EXP2:
    // "+exp2"; MIXSIM_LAYERNORM_VEC4=1: "+lnv4"; MIXSIM_ATTENTION_HEAVY_FIRST=1: "+hf";
    // MIXSIM_ATTENTION_FUSED_DQ=1: "+fdq"; MIXSIM_BF16_GELU_EPILOGUE=1: "+ge";
    // MIXSIM_LAYERNORM_FEEDS_PRODUCT=1: "+lnf"; MIXSIM_CLASSIFIER_TWO_ROWS=1: "+c2r";
    // MIXSIM_ATTENTION_WGMMA=1: "+wg"; MIXSIM_ATTENTION_WGMMA_BACKWARD=1: "+wgb"), as it
    // reports them
    const mixsim::CudaKernelChoices kernels = mixsim::cuda_kernel_choices(*gpu);
    const bool tc_attention = kernels.tc_attention, wide = kernels.wide_forward,
               gelu_exp2 = kernels.gelu_exp2, exp2 = kernels.classifier_exp2,
               ln_vec4 = kernels.layernorm_vec4, heavy_first = kernels.heavy_first,
               fused_dq = kernels.fused_dq, gelu_epilogue = kernels.bf16_gelu_epilogue,
               ln_feeds = kernels.layernorm_feeds, two_rows = kernels.classifier_two_rows,
               wgmma = kernels.wgmma_forward, wgmma_backward = kernels.wgmma_backward;
    // MIXSIM_CUBLASLT: bias and GELU fused into cuBLASLt epilogues ("+lt" in the label);
    // MIXSIM_CUBLASLT_TUNE=1 (opt-in): their algorithms chosen by timing ("+ltt")
    const bool cublaslt = mixsim::cublaslt_use(*gpu).enabled,
               lt_tune = mixsim::cublaslt_use(*gpu).tune;
    // MIXSIM_BF16_ACTIVATIONS: product-only tensors stored in bf16 ("+act")
    const bool bf16_act = gpu->activation_storage() == mixsim::DType::bf16;
    // MIXSIM_BF16_OUTPUTS: products write bf16 themselves ("+out")
    const bool bf16_out = gpu->bf16_product_outputs();
    // MIXSIM_BF16_WEIGHTS: the products read bf16 weights rounded once per forward ("+w")
    const bool bf16_weights = gpu->bf16_weight_copies();
    // MIXSIM_BF16_ATTENTION_OUT=1 (opt-in): attention's output and its gradient in bf16 ("+ao")
    const bool bf16_att_out = gpu->attention_out_storage() == mixsim::DType::bf16;
    // MIXSIM_BF16_BRANCH_OUTPUTS=1 (opt-in): the residual branches' ends in bf16 ("+bo")
    const bool branch_out = gpu->branch_output_storage() == mixsim::DType::bf16;
    const std::string label =
        std::string(backend_name == "cuda" ? "mixsim-fp32"
                    : tc_attention         ? "mixsim-bf16tc"
                                           : "mixsim-bf16mm") +
        (cublaslt ? "+lt" : "") + (bf16_act ? "+act" : "") + (bf16_weights ? "+w" : "") +
        (bf16_out ? "+out" : "") + (wide ? "+wide" : "") + (bf16_att_out ? "+ao" : "") +
        (gelu_exp2 ? "+gexp2" : "") + (exp2 ? "+exp2" : "") + (ln_vec4 ? "+lnv4" : "") +
        (heavy_first ? "+hf" : "") + (fused_dq ? "+fdq" : "") + (gelu_epilogue ? "+ge" : "") +
        (ln_feeds ? "+lnf" : "") + (two_rows ? "+c2r" : "") + (branch_out ? "+bo" : "") +
        (wgmma ? "+wg" : "") + (wgmma_backward ? "+wgb" : "") + (lt_tune ? "+ltt" : "");
    for (const auto& cfg : kConfigs) {
      if (("," + configs + ",").find(std::string(",") + cfg.name + ",") == std::string::npos)
        continue;
      for (const int accum : accums) {
        const int n = steps > 0 ? steps : cfg.steps;
        run(*gpu, label, cfg, batch, accum, (n + accum - 1) / accum, peak, profile, range);
      }
      if (cublaslt) {
        const mixsim::CublasLtUse use = mixsim::cublaslt_use(*gpu);
        std::printf(
            "       cuBLASLt: %zu fused products, %zu fallbacks%s%s; algorithms: %zu "
            "timed, %zu from the choices table, %zu mismatched%s%s\n",
            use.fused, use.fallbacks, use.fallbacks ? " (last: " : "",
            use.fallbacks ? (use.last_fallback + ")").c_str() : "", use.tuned, use.chosen,
            use.mismatched, use.mismatched ? " (last: " : "",
            use.mismatched ? (use.last_mismatch + ")").c_str() : "");
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_train: %s\n", e.what());
    return 1;
  }
}
