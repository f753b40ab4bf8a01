// bench_gpu_gemm: what cuBLAS alone makes of the matrix products of one training step, with
// nothing else around them: the ceiling of mixsim's products on this card, to hold the products'
// share of a profiled step (bench_gpu_train --profile) against. For every product of the model
// (per layer qkv, attention projection, fc, fc projection; the tied head once) and each of its
// three passes (forward out = x W^T, the input gradient dout W, the weight gradient dW += dout^T x
// accumulated in fp32), bf16 operands with fp32 accumulation, it times:
//   gemmex    cublasGemmEx with CUBLAS_GEMM_DEFAULT and an fp32 result: what kernels/matmul.cu
//             runs for a product without an epilogue;
//   lt        cuBLASLt's first heuristic answer with a 32 MiB workspace, fp32 result: what
//             kernels/matmul.cu runs for a product with an epilogue (MIXSIM_CUBLASLT), here
//             without the epilogue (with one the heuristic may choose another algorithm); for the
//             weight gradient, which mixsim always runs through cublasGemmEx, what cuBLASLt
//             would make of it;
//   lt-best   the fastest of cuBLASLt's first --top answers, each timed here: what choosing the
//             algorithm by measurement (not by heuristic) would gain;
//   lt-bf16   as lt with a bf16 result (forward and input gradient: MIXSIM_BF16_OUTPUTS).
// The forward and input-gradient passes run with beta 0 (mixsim's plain-cuBLAS forward with a
// bias adds onto the broadcast bias, beta 1: the same product, one more read of the output).
// Each is the mean of --reps calls after two warm-up calls, timed with CUDA events. Operands are a
// random block of bf16 values in [-1, 1) repeated over each matrix (the values do not change the
// work; random ones keep the tensor cores' power draw realistic, unlike zeros). Usage:
//   build/bench/bench_gpu_gemm [--configs gpt2,1.1b] [--batch B] [--top K] [--reps R]
// Configs as bench_gpu_train's: gpt2 (L 12, C 768, T 1024, vocab padded 50304, B 8) and 1.1b (L 24,
// C 2048, T 2048, B 2). Prints per product and pass the ms per call and TFLOP/s of each variant,
// then the step's sums, and RESULT lines for scripts/gpu-check.sh's table.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "args.hpp"
#include "mixsim/backend/device.hpp"
#include "mixsim/core/rng.hpp"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + ": " + cublasGetStatusString(s));
}
#define CHECK(call) check((call), #call)

constexpr std::size_t kLtWorkspaceBytes = std::size_t(32) << 20;  // as kernels/matmul.cu

// One device allocation, freed on scope exit.
class Buffer {
 public:
  explicit Buffer(std::size_t bytes) { CHECK(cudaMalloc(&p_, std::max<std::size_t>(bytes, 256))); }
  ~Buffer() { cudaFree(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
};

// Fills n bf16 elements with a random block of 1 Mi values, repeated.
void fill_random(void* dst, std::size_t n, std::uint64_t seed) {
  constexpr std::size_t kBlock = std::size_t(1) << 20;
  std::vector<__nv_bfloat16> block(std::min(n, kBlock));
  mixsim::Rng rng(seed);
  for (auto& v : block) v = __float2bfloat16(float(2 * rng.uniform() - 1));
  auto* d = static_cast<__nv_bfloat16*>(dst);
  for (std::size_t at = 0; at < n; at += block.size())
    CHECK(cudaMemcpy(d + at, block.data(), std::min(block.size(), n - at) * sizeof(__nv_bfloat16),
                     cudaMemcpyHostToDevice));
}

// D (m,n) = alpha op(A) op(B) + beta D, column-major, as kernels/matmul.cu calls it.
struct Problem {
  cublasOperation_t ta, tb;
  int m, n, k;
  const void* A;
  int lda;
  const void* B;
  int ldb;
  void* D;
  int ldd;
  float beta;
  double flops() const { return 2.0 * double(m) * n * k; }
};

struct Timer {
  cudaEvent_t start{}, stop{};
  Timer() {
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
  }
  ~Timer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  // Mean seconds of `reps` calls of fn after two warm-up calls.
  template <class Fn>
  double mean_seconds(int reps, Fn&& fn) {
    fn();
    fn();
    CHECK(cudaEventRecord(start));
    for (int r = 0; r < reps; ++r) fn();
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    return 1e-3 * double(ms) / reps;
  }
};

// cuBLASLt: a handle, the workspace, and the descriptors of the problem being timed.
class Lt {
 public:
  Lt() {
    CHECK(cublasLtCreate(&handle_));
    CHECK(cudaMalloc(&workspace_, kLtWorkspaceBytes));
  }
  ~Lt() {
    release();
    cudaFree(workspace_);
    cublasLtDestroy(handle_);
  }
  Lt(const Lt&) = delete;
  Lt& operator=(const Lt&) = delete;

  // Describes p with a D of type dtype and returns the heuristic's first `top` answers for it
  // (none where cuBLASLt has no algorithm); run() then runs p with one of them.
  std::vector<cublasLtMatmulHeuristicResult_t> prepare(const Problem& p, cudaDataType_t dtype,
                                                       int top) {
    release();
    CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const auto ta = std::int32_t(p.ta), tb = std::int32_t(p.tb);
    CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    const bool ta_n = p.ta == CUBLAS_OP_N, tb_n = p.tb == CUBLAS_OP_N;
    CHECK(cublasLtMatrixLayoutCreate(&a_, CUDA_R_16BF, ta_n ? p.m : p.k, ta_n ? p.k : p.m, p.lda));
    CHECK(cublasLtMatrixLayoutCreate(&b_, CUDA_R_16BF, tb_n ? p.k : p.n, tb_n ? p.n : p.k, p.ldb));
    CHECK(cublasLtMatrixLayoutCreate(&d_, dtype, p.m, p.n, p.ldd));
    cublasLtMatmulPreference_t pref = nullptr;
    CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t bytes = kLtWorkspaceBytes;
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                               &bytes, sizeof(bytes)));
    std::vector<cublasLtMatmulHeuristicResult_t> results(std::size_t(std::max(top, 1)));
    int count = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(
        handle_, desc_, a_, b_, d_, d_, pref, int(results.size()), results.data(), &count);
    cublasLtMatmulPreferenceDestroy(pref);
    results.resize(s == CUBLAS_STATUS_SUCCESS ? std::size_t(count) : 0);
    std::erase_if(results, [](const auto& r) { return r.state != CUBLAS_STATUS_SUCCESS; });
    return results;
  }

  void run(const Problem& p, const cublasLtMatmulHeuristicResult_t& r) {
    const float alpha = 1.f;
    CHECK(cublasLtMatmul(handle_, desc_, &alpha, p.A, a_, p.B, b_, &p.beta, p.D, d_, p.D, d_,
                         &r.algo, workspace_, r.workspaceSize, nullptr));
  }

 private:
  void release() {
    if (desc_) cublasLtMatmulDescDestroy(desc_);
    for (cublasLtMatrixLayout_t l : {a_, b_, d_})
      if (l) cublasLtMatrixLayoutDestroy(l);
    desc_ = nullptr;
    a_ = b_ = d_ = nullptr;
  }

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, d_ = nullptr;
};

struct Shape {
  const char* name;
  int n_layer, C, T, Vp, batch;
};
const Shape kShapes[] = {
    {"gpt2", 12, 768, 1024, 50304, 8},
    {"1.1b", 24, 2048, 2048, 50304, 2},
};

// One matrix product of the model: out (N, OC) = in (N, C) W^T, `count` times a step.
struct Product {
  std::string name;
  int C, OC, count;
};

// Seconds per call of each variant, for one pass of one product; a negative time: not available.
struct Times {
  double gemmex = -1, lt = -1, best = -1, lt_bf16 = -1;
};

const char* const kPasses[] = {"forward", "dinp", "dweight"};

Times time_pass(cublasHandle_t blas, Lt& lt, Timer& timer, const Problem& fp32, void* d_bf16,
                bool with_bf16, int top, int reps) {
  Times t;
  const float alpha = 1.f;
  const Problem& p = fp32;
  t.gemmex = timer.mean_seconds(reps, [&] {
    CHECK(cublasGemmEx(blas, p.ta, p.tb, p.m, p.n, p.k, &alpha, p.A, CUDA_R_16BF, p.lda, p.B,
                       CUDA_R_16BF, p.ldb, &p.beta, p.D, CUDA_R_32F, p.ldd, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT));
  });
  const auto algos = lt.prepare(p, CUDA_R_32F, top);
  for (std::size_t i = 0; i < algos.size(); ++i) {
    // the heuristic's first answer with the full repetitions; the others with fewer, to rank them
    const double s =
        timer.mean_seconds(i == 0 ? reps : std::max(3, reps / 4), [&] { lt.run(p, algos[i]); });
    if (i == 0) t.lt = s;
    if (t.best < 0 || s < t.best) t.best = s;
  }
  if (with_bf16) {
    Problem q = p;
    q.D = d_bf16;
    const auto first = lt.prepare(q, CUDA_R_16BF, 1);
    if (!first.empty()) t.lt_bf16 = timer.mean_seconds(reps, [&] { lt.run(q, first[0]); });
  }
  return t;
}

std::string cell(double s, double flops) {
  char b[40];
  if (s < 0)
    std::snprintf(b, sizeof b, "%18s", "-");
  else
    std::snprintf(b, sizeof b, "%8.3f ms %5.0f TF", 1e3 * s, flops / s / 1e12);
  return b;
}

void report(const std::string& what, double flops, const Times& t) {
  std::printf("  %-28s %s  %s  %s  %s\n", what.c_str(), cell(t.gemmex, flops).c_str(),
              cell(t.lt, flops).c_str(), cell(t.best, flops).c_str(),
              cell(t.lt_bf16, flops).c_str());
}

void run_shape(const Shape& shape, int batch, int top, int reps) {
  const int B = batch > 0 ? batch : shape.batch, N = B * shape.T, C = shape.C;
  const std::vector<Product> products = {{"qkv", C, 3 * C, shape.n_layer},
                                         {"attention proj", C, C, shape.n_layer},
                                         {"fc", C, 4 * C, shape.n_layer},
                                         {"fc proj", 4 * C, C, shape.n_layer},
                                         {"head", C, shape.Vp, 1}};
  std::printf("%s: N = B %d x T %d = %d tokens, C %d, %d layers, padded vocab %d\n", shape.name, B,
              shape.T, N, C, shape.n_layer, shape.Vp);
  std::printf("  %-28s %18s  %18s  %18s  %18s\n", "product, pass", "gemmex (fp32 out)",
              "lt (fp32 out)", "lt-best", "lt (bf16 out)");
  cublasHandle_t blas = nullptr;
  CHECK(cublasCreate(&blas));
  CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
  Lt lt;
  Timer timer;
  // per step, summed over products and passes: each variant, and the per-pass best of them all
  double sum_gemmex = 0, sum_lt = 0, sum_best = 0, sum_bf16 = 0, flops = 0;
  for (const Product& pr : products) {
    const std::size_t in = std::size_t(N) * pr.C, out = std::size_t(N) * pr.OC,
                      w = std::size_t(pr.OC) * pr.C;
    Buffer x(in * 2), dout(out * 2), weight(w * 2), d32(std::max(out, in) * 4),
        d16(std::max(out, in) * 2), dw(w * 4);
    fill_random(x.get(), in, 1);
    fill_random(dout.get(), out, 2);
    fill_random(weight.get(), w, 3);
    CHECK(cudaMemset(dw.get(), 0, w * 4));
    // forward: out^T (OC,N) = W (OC,C) . x^T (C,N); dinp^T (C,N) = W^T (C,OC) . dout^T (OC,N);
    // dW^T (C,OC) += x^T (C,N) . dout (N,OC)  (kernels/matmul.cu's calls)
    const Problem passes[3] = {
        {CUBLAS_OP_T, CUBLAS_OP_N, pr.OC, N, pr.C, weight.get(), pr.C, x.get(), pr.C, d32.get(),
         pr.OC, 0.f},
        {CUBLAS_OP_N, CUBLAS_OP_N, pr.C, N, pr.OC, weight.get(), pr.C, dout.get(), pr.OC, d32.get(),
         pr.C, 0.f},
        {CUBLAS_OP_N, CUBLAS_OP_T, pr.C, pr.OC, N, x.get(), pr.C, dout.get(), pr.OC, dw.get(), pr.C,
         1.f},
    };
    for (int i = 0; i < 3; ++i) {
      const Times t = time_pass(blas, lt, timer, passes[i], d16.get(), i < 2, top, reps);
      const std::string what = pr.name + ", " + kPasses[i] + " x" + std::to_string(pr.count);
      report(what, passes[i].flops(), t);
      // lt-best includes lt (the heuristic's first answer is among those timed)
      const double best = t.best > 0 ? std::min(t.gemmex, t.best) : t.gemmex;
      sum_gemmex += pr.count * t.gemmex;
      sum_lt += pr.count * (t.lt > 0 ? t.lt : t.gemmex);
      sum_best += pr.count * best;
      sum_bf16 += pr.count * (t.lt_bf16 > 0 ? std::min(t.lt_bf16, best) : best);
      flops += pr.count * passes[i].flops();
    }
  }
  cublasDestroy(blas);
  // the MFU a step would reach if everything but its products took no time (the products'
  // flops only: bench_gpu_train's MFU also counts attention, which is not here)
  constexpr double kPeak = 989e12;
  auto line = [&](const char* what, double s) {
    std::printf("  step's products, %-34s %7.2f ms  %5.0f TFLOP/s  (%.1f%% of 989)\n", what,
                1e3 * s, flops / s / 1e12, 100.0 * flops / s / kPeak);
  };
  line("gemmex:", sum_gemmex);
  line("lt (gemmex where no algorithm):", sum_lt);
  line("best of gemmex, lt, lt-best:", sum_best);
  line("best, bf16 out where faster:", sum_bf16);
  std::printf(
      "RESULT gemm-ceiling %s gemmex_ms=%.2f lt_ms=%.2f best_ms=%.2f best_bf16_ms=%.2f "
      "best_tflops=%.0f\n",
      shape.name, 1e3 * sum_gemmex, 1e3 * sum_lt, 1e3 * sum_best, 1e3 * sum_bf16,
      flops / sum_best / 1e12);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string configs = "gpt2";
  int batch = 0, top = 8, reps = 20;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--configs") && i + 1 < argc) {
      configs = argv[++i];
    } else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) {
      batch = int(mixsim::bench::int_arg("bench_gpu_gemm", "--batch", argv[++i], 0, 4096));
    } else if (!std::strcmp(argv[i], "--top") && i + 1 < argc) {
      top = int(mixsim::bench::int_arg("bench_gpu_gemm", "--top", argv[++i], 1, 64));
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = int(mixsim::bench::int_arg("bench_gpu_gemm", "--reps", argv[++i], 1, 100000));
    } else {
      std::fprintf(stderr, "usage: %s [--configs gpt2,1.1b] [--batch B] [--top K] [--reps R]\n",
                   argv[0]);
      return 2;
    }
  }
  if (batch < 0 || top < 1 || reps < 1) {
    std::fprintf(stderr, "bench_gpu_gemm: --batch must be >= 0, --top and --reps >= 1\n");
    return 2;
  }
  const auto avail = mixsim::gpu_availability();
  if (avail.count == 0) {
    std::fprintf(stderr, "bench_gpu_gemm: no usable GPU: %s\n", avail.reason.c_str());
    return 2;
  }
  std::printf("device: %s; bf16 operands, fp32 accumulation; mean of %d calls, %d candidates\n",
              avail.name.c_str(), reps, top);
  try {
    bool any = false;
    for (const Shape& s : kShapes)
      if (("," + configs + ",").find(std::string(",") + s.name + ",") != std::string::npos) {
        run_shape(s, batch, top, reps);
        any = true;
      }
    if (!any) {
      std::fprintf(stderr, "bench_gpu_gemm: --configs %s names none of gpt2, 1.1b\n",
                   configs.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_gemm: %s\n", e.what());
    return 1;
  }
}
