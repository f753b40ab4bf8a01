// The CUDA backend (fp32; matrix products in fp32 or bf16): device memory, one stream for every op
// and copy, a cuBLAS handle, and a workspace that grows to the largest temporary any op has needed.
// Each op forwards to its launcher (launchers.cuh), which checks its assumptions and the launch.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "launchers.cuh"
#include "mixsim/backend/cuda.hpp"
#include "mixsim/core/env.hpp"

namespace mixsim {

namespace {

std::string mib(std::size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", double(bytes) / double(1 << 20));
  return text;
}

class Stream {
 public:
  Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Cublas {
 public:
  explicit Cublas(cudaStream_t stream) {
    if (cublasCreate(&handle_) != CUBLAS_STATUS_SUCCESS)
      throw Error("cannot create a cuBLAS handle (is the GPU out of memory?)");
    if (cublasSetStream(handle_, stream) != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(handle_);
      throw Error("cannot bind the cuBLAS handle to the backend's stream");
    }
    try {
      cuda::set_fp32_math(handle_);
    } catch (...) {
      cublasDestroy(handle_);
      throw;
    }
  }
  ~Cublas() { cublasDestroy(handle_); }
  Cublas(const Cublas&) = delete;
  Cublas& operator=(const Cublas&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// Selects the device before the stream and the handle are created on it.
// An environment variable's text, "" when unset.
std::string env_text(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// The table built into mixsim (kernels/cublaslt_choices.txt), read once.
std::shared_ptr<const cublaslt::Choices> builtin_choices() {
  static const auto table = std::make_shared<const cublaslt::Choices>(
      cublaslt::Choices::parse(cuda::kBuiltinCublasLtChoices, "kernels/cublaslt_choices.txt"));
  return table;
}

// cuBLASLt's algorithm choices from the environment: MIXSIM_CUBLASLT_TUNE (timed; off) and
// MIXSIM_CUBLASLT_TUNE_OUT (the file they are written to, with tune only), else
// MIXSIM_CUBLASLT_CHOICES (the table's choices; on) from MIXSIM_CUBLASLT_CHOICES_FILE or, unset,
// the table built in.
// The switches are checked whether cuBLASLt runs or not (a typo must not wait for the backend
// that reads it); the table is read only for one that runs (`load`).
cuda::LtOptions lt_options(bool load) {
  cuda::LtOptions options;
  options.tune = env_switch("MIXSIM_CUBLASLT_TUNE", false);
  options.tune_out = env_text("MIXSIM_CUBLASLT_TUNE_OUT");
  if (!options.tune_out.empty() && !options.tune)
    throw UsageError("environment variable MIXSIM_CUBLASLT_TUNE_OUT=" + options.tune_out +
                     ": it names where timed choices go, so set MIXSIM_CUBLASLT_TUNE=1 with it "
                     "(or unset it)");
  const bool choices = env_switch("MIXSIM_CUBLASLT_CHOICES", true);
  const std::string file = env_text("MIXSIM_CUBLASLT_CHOICES_FILE");
  if (!file.empty() && !choices)
    throw UsageError("environment variable MIXSIM_CUBLASLT_CHOICES_FILE=" + file +
                     " with MIXSIM_CUBLASLT_CHOICES=0: unset one of them");
  if (!file.empty() && options.tune)
    throw UsageError("environment variable MIXSIM_CUBLASLT_CHOICES_FILE=" + file +
                     " with MIXSIM_CUBLASLT_TUNE=1: tuning times every choice itself and reads no "
                     "table, so unset one of them");
  if (load && choices && !options.tune)
    options.choices =
        file.empty() ? builtin_choices()
                     : std::make_shared<const cublaslt::Choices>(cublaslt::Choices::read(file));
  return options;
}

int select_device(int device) {
  int count = 0;  // left unwritten without a driver
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("the CUDA backend needs a usable GPU, but there is none: ") +
                cudaGetErrorString(rc) + "; use the cpu backend on this machine");
  }
  if (device < 0 || device >= count)
    throw Error("CUDA device " + std::to_string(device) + " does not exist: this machine has " +
                std::to_string(count) + " (devices are numbered from 0)");
  CUDA_CHECK(cudaSetDevice(device));
  return device;
}

// The switches (core/env.hpp: "1" on, "0" off, unset the default; each passed tests/gpu and
// scripts/gpu-check.sh on an H100 or H200, docs/benchmarks.md, and all are on by default for
// cuda-bf16): MIXSIM_TC_ATTENTION, the tensor-core attention kernels for cuda-bf16 (mma.sync);
// MIXSIM_CUBLASLT, the products with a bias or a GELU through cuBLASLt, fused into the epilogue
// (matmul.cu; off by default for cuda, whose fp32 products stay plain cuBLAS and its GELU the
// CPU's formula); MIXSIM_BF16_ACTIVATIONS, cuda-bf16 asks the model to store the tensors only
// products read in bf16 (activation_storage); MIXSIM_BF16_OUTPUTS, products write the bf16 qkv,
// the MLP's pre-activation and its gradient, and the logits themselves, and the tensor-core
// attention backward the bf16 dqkv (bf16_product_outputs; the bias rounded to bf16 first; on by
// default since the H100 run of 2026-11-27: 21% more tokens/s on GPT-2); MIXSIM_BF16_WEIGHTS: the
// model hands the products bf16 copies of its weights, rounded once per forward pass
// (bf16_weight_copies; the same bf16 values the products would round at each use, so no result
// changes). MIXSIM_CLASSIFIER_EXP2 (cuda and cuda-bf16; on by default since the H200 run of
// 2026-11-27: the classifier 1.37 -> 0.85 ms a GPT-2 step), the cached classifier's max, sum and
// gradients through exp2 (classifier.cu; within rounding of expf's). And one opt-in, off unless
// set to 1: MIXSIM_TC_WIDE_FORWARD, the tensor-core attention forward in blocks of 128 rows, two
// groups of 16 a warp, for head sizes up to 64 (attention_tc.cu, forward_kernel<HS, 2>;
// bit-identical; measured slower on that run, 1.54 against 1.24 ms a step, at half the resident
// warps). MIXSIM_GELU_EXP2 (on by default for cuda-bf16 since the H200 run of 2026-11-27, off for
// cuda): the GELU kernel on the hardware's ex2 and reciprocal (gelu.cu; +0.7% GPT-2 tokens/s).
// And one opt-in written after that run, without a GPU at hand: MIXSIM_BF16_ATTENTION_OUT (with
// bf16 activations; cpu-bf16 reads it too), the model stores attention's output and its gradient
// in bf16 (attention_out_storage): no conversions between the projection and attention (36 a
// GPT-2 step, ~0.38 ms on an H200), and attention's backward takes D = dout . out of the rounded
// values. And MIXSIM_LAYERNORM_VEC4 (both backends; an opt-in written without a GPU), LayerNorm's
// forward and its fused backward with 16-byte loads and stores where C is a multiple of 4
// (layernorm.cu; the row sums in another order, so within rounding of the default's). And
// MIXSIM_ATTENTION_HEAVY_FIRST (cuda-bf16's tensor-core attention; an opt-in written without a
// GPU): the blocks re-read their launch order so that every head's longest blocks start first,
// not one head after another (attention_tc.cu, place_of; bit-identical). And
// MIXSIM_ATTENTION_FUSED_DQ (cuda-bf16's tensor-core attention; an opt-in written without a
// GPU): attention's backward in one kernel, the key-major one, which adds dq's parts in a fixed
// order through semaphores between blocks, instead of a second kernel recomputing the scores for
// dq (attention_tc.cu, backward_dkdv_kernel<HS, Out, true>; within rounding of the default's).
// And MIXSIM_CUBLASLT_TUNE (where cuBLASLt is on; an opt-in written without a GPU): each cuBLASLt
// product's algorithm timed among cuBLASLt's first candidates on its first call, the plain
// products that assign their result included (matmul.cu, LtMatmul), fixed for the backend's life
// but chosen by timing, so not the same in every process; with MIXSIM_CUBLASLT_TUNE_OUT=FILE the
// choices go into FILE's table. Without tune, MIXSIM_CUBLASLT_CHOICES (on) runs a table's choices
// where it names the device, the cuBLASLt version and the product, the heuristic's first answer
// elsewhere: the build's kernels/cublaslt_choices.txt, or MIXSIM_CUBLASLT_CHOICES_FILE
// (lt_options). And MIXSIM_BF16_GELU_EPILOGUE (cuda-bf16 with cuBLASLt and bf16 product outputs;
// an opt-in written without a GPU): the fc layer's bf16 pre and out from cuBLASLt's GELU_AUX_BIAS
// epilogue, its GELU of the unrounded sum, instead of the BIAS epilogue and the GELU kernel
// (matmul.cu, matmul_gelu_forward). And MIXSIM_LAYERNORM_FEEDS_PRODUCT (both CUDA backends and
// both CPU ones; an opt-in written without a GPU): the LayerNorm backward whose dinp (the residual
// stream's gradient) is the next projection's dout also sums its columns into that projection's
// bias gradient and rounds it to bf16 for its products, in the same pass, so that the
// projection's backward skips its own column-sum pass over the fp32 gradient
// (layernorm_backward_feeding; layernorm.cu). And MIXSIM_CLASSIFIER_TWO_ROWS (both CUDA backends;
// an opt-in written without a GPU): the cached classifier in blocks of 512 threads, two rows an
// SM where two fit its shared memory (bf16 GPT-2 rows), where one block of 1024 took an SM's
// registers (classifier.cu; the row's sums in another order, so within rounding of the default's).
// And MIXSIM_BF16_BRANCH_OUTPUTS (cuda-bf16, and cpu-bf16 its reference; an opt-in written
// without a GPU): the model stores the residual branches' ends in bf16 (branch_output_storage):
// the two projections write their outputs in bf16, which the fused residual add and LayerNorm
// widens, and the qkv, fc and head products their input gradients, which the LayerNorm backward
// widens (layernorm.cu): 1.2 GB less traffic a GPT-2 step at B 8, rounded as autocast rounds
// them. And MIXSIM_ATTENTION_WGMMA (cuda-bf16's tensor-core attention, head sizes 64 and 128, on
// a device that runs the build's sm_90a code: H100, H200; an opt-in written without a GPU): the
// forward's products on Hopper's warpgroup wgmma instead of mma.sync and ldmatrix
// (attention_tc.cu, wgmma::forward_kernel; within rounding of the default's); and
// MIXSIM_ATTENTION_WGMMA_BACKWARD, the same for the backward's dq and dkdv kernels (not with
// MIXSIM_ATTENTION_FUSED_DQ, whose kernel stays on mma.sync).

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, MatmulPrecision precision)
      : device_(select_device(device)),
        precision_(precision),
        tc_attention_(env_switch("MIXSIM_TC_ATTENTION", true) &&
                      precision == MatmulPrecision::bf16),
        bf16_activations_(env_switch("MIXSIM_BF16_ACTIVATIONS", true) &&
                          precision == MatmulPrecision::bf16),
        bf16_outputs_(env_switch("MIXSIM_BF16_OUTPUTS", true) &&
                      precision == MatmulPrecision::bf16),
        bf16_weights_(env_switch("MIXSIM_BF16_WEIGHTS", true) &&
                      precision == MatmulPrecision::bf16),
        wide_forward_(env_switch("MIXSIM_TC_WIDE_FORWARD", false) &&
                      precision == MatmulPrecision::bf16),
        classifier_{env_switch("MIXSIM_CLASSIFIER_EXP2", true),
                    env_switch("MIXSIM_CLASSIFIER_TWO_ROWS", false)},
        gelu_exp2_(env_switch("MIXSIM_GELU_EXP2", precision == MatmulPrecision::bf16)),
        bf16_attention_out_(env_switch("MIXSIM_BF16_ATTENTION_OUT", false) && bf16_activations_),
        bf16_branch_outputs_(env_switch("MIXSIM_BF16_BRANCH_OUTPUTS", false) &&
                             precision == MatmulPrecision::bf16),
        layernorm_vec4_(env_switch("MIXSIM_LAYERNORM_VEC4", false)),
        heavy_first_(env_switch("MIXSIM_ATTENTION_HEAVY_FIRST", false) && tc_attention_),
        fused_dq_(env_switch("MIXSIM_ATTENTION_FUSED_DQ", false) && tc_attention_),
        wgmma_forward_(env_switch("MIXSIM_ATTENTION_WGMMA", false) && tc_attention_),
        wgmma_backward_(env_switch("MIXSIM_ATTENTION_WGMMA_BACKWARD", false) && tc_attention_),
        bf16_gelu_epilogue_(env_switch("MIXSIM_BF16_GELU_EPILOGUE", false) &&
                            precision == MatmulPrecision::bf16),
        feeds_products_(env_switch("MIXSIM_LAYERNORM_FEEDS_PRODUCT", false)),
        max_shared_(cuda::max_shared_per_block(device_)),
        stream_(),
        cublas_(stream_.get()),
        lt_(env_switch("MIXSIM_CUBLASLT", precision == MatmulPrecision::bf16)
                ? cuda::make_lt_matmul(lt_options(true))
                : (lt_options(false), nullptr)) {
    // the wgmma switches hold only where the device runs their code (asked once, here)
    if ((wgmma_forward_ || wgmma_backward_) && !cuda::wgmma_runs_on(device_))
      wgmma_forward_ = wgmma_backward_ = false;
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_.get());
    cudaFree(workspace_);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string_view name() const override {
    return precision_ == MatmulPrecision::bf16 ? "cuda-bf16" : "cuda";
  }
  cudaStream_t stream() const { return stream_.get(); }
  CublasLtUse cublaslt_use() const {
    if (!lt_) return {};
    CublasLtUse use = cuda::lt_use(*lt_);
    use.enabled = true;
    return use;
  }
  CudaKernelChoices kernel_choices() const {
    // (the GELU epilogue in bf16 where the model stores the MLP's pre and out in bf16 and
    // cuBLASLt is on)
    return {
        tc_attention_, tc_attention_ && wide_forward_, gelu_exp2_, classifier_.exp2,
        layernorm_vec4_, heavy_first_, fused_dq_,
        bf16_gelu_epilogue_ && lt_ && bf16_outputs_ && bf16_activations_, feeds_products_,
        classifier_.two_rows,
        // (the head size is asked per call; the wgmma backward is not where the fused dq runs
        // instead: as attention_backward asks, at head size 64)
        wgmma_forward_,
        wgmma_backward_ && !(fused_dq_ && cuda::attention_tc_fused_dq_fits(64, 1, max_shared_))};
  }
  int device() const { return device_; }

  void* allocate(std::size_t bytes) override {
    void* p = nullptr;
    const cudaError_t rc = cudaMalloc(&p, bytes ? bytes : 1);
    if (rc == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky, but leave no trace for the next check
      std::size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      throw Error("out of GPU memory allocating " + mib(bytes) + " on CUDA device " +
                  std::to_string(device_) + " (" + mib(free) + " free of " + mib(total) +
                  "): use a smaller model, batch or context, or a GPU with more memory");
    }
    CUDA_CHECK(rc);
    return p;
  }
  void deallocate(void* ptr) noexcept override {
    cudaStreamSynchronize(stream_.get());  // queued kernels may still use it
    cudaFree(ptr);
  }
  // Copies return when the host buffer may be reused (upload) or holds the data (download).
  void upload(void* dst, const void* host_src, std::size_t bytes) override {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_.get()));
    synchronize();
  }
  void download(void* host_dst, const void* src, std::size_t bytes) override {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_.get()));
    synchronize();
  }
  void copy(void* dst, const void* src, std::size_t bytes) override {
    if (dst == src || bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_.get()));
  }
  void zero(void* ptr, std::size_t bytes) override {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, stream_.get()));
  }
  void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(stream_.get())); }
  DType activation_storage() const override {
    return bf16_activations_ ? DType::bf16 : DType::fp32;
  }

  void encoder_forward(float* out, const int* tokens, const float* wte, const float* wpe, int B,
                       int T, int C) override {
    cuda::encoder_forward(out, tokens, wte, wpe, B, T, C, stream_.get());
  }
  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* tokens, int B,
                        int T, int C) override {
    CUDA_REQUIRE(B > 0 && T > 0, "encoder_backward", cuda::dims({{"B", B}, {"T", T}}));
    cuda::encoder_backward(dwte, dwpe, dout, tokens, B, T, C,
                           workspace(cuda::encoder_backward_workspace(B, T)), stream_.get());
  }
  void layernorm_forward(TensorOut out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int N, int C) override {
    cuda::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, layernorm_vec4_,
                            stream_.get());
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, TensorIn dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    CUDA_REQUIRE(N > 0 && C > 0, "layernorm_backward", cuda::dims({{"N", N}, {"C", C}}));
    cuda::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C,
                             layernorm_vec4_, workspace(cuda::layernorm_backward_workspace(N, C)),
                             stream_.get());
  }
  bool layernorm_feeds_products() const override { return feeds_products_; }
  // As layernorm_backward, and the projection's bias gradient and (bf16 products) its bf16
  // operand from the same pass (layernorm.cu).
  TensorIn layernorm_backward_feeding(float* dinp, float* dweight, float* dbias, TensorIn dout,
                                      const float* inp, const float* weight, const float* mean,
                                      const float* rstd, int N, int C, float* product_dbias,
                                      TensorOut copy) override {
    CUDA_REQUIRE(N > 0 && C > 0 && feeds_products_ && product_dbias, "layernorm_backward_feeding",
                 cuda::dims({{"N", N}, {"C", C}}) +
                     " (MIXSIM_LAYERNORM_FEEDS_PRODUCT=1 and a product bias gradient needed)");
    const bool round = precision_ == MatmulPrecision::bf16 && copy.data;
    CUDA_REQUIRE(!round || copy.type == DType::bf16, "layernorm_backward_feeding",
                 std::string("the copy must be bf16"));
    cuda::layernorm_backward(
        dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, layernorm_vec4_,
        workspace(cuda::layernorm_backward_workspace(N, C, true)), stream_.get(), product_dbias,
        round ? static_cast<__nv_bfloat16*>(copy.data) : nullptr);
    return round ? TensorIn(copy.data, DType::bf16) : TensorIn(dinp);
  }
  void matmul_forward(TensorOut out, TensorIn inp, TensorIn weight, TensorIn bias, int N, int C,
                      int OC) override {
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0, "matmul_forward",
                 cuda::dims({{"N", N}, {"C", C}, {"OC", OC}}));
    cuda::matmul_forward(
        cublas_.get(), lt_.get(), precision_, out, inp, weight, bias, N, C, OC,
        workspace(cuda::matmul_forward_workspace(precision_, lt_ != nullptr, inp.type, weight.type,
                                                 N, C, OC, out.type, bias.data != nullptr)),
        stream_.get());
  }
  void matmul_backward(TensorOut dinp, float* dweight, float* dbias, TensorIn dout, TensorIn inp,
                       TensorIn weight, int N, int C, int OC) override {
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0, "matmul_backward",
                 cuda::dims({{"N", N}, {"C", C}, {"OC", OC}}));
    // (cuBLASLt runs the input gradient only with MIXSIM_CUBLASLT_TUNE, or where the choices
    // table names it)
    cuda::matmul_backward(
        cublas_.get(), lt_.get(), precision_, dinp, dweight, dbias, dout, inp, weight, N, C, OC,
        workspace(cuda::matmul_backward_workspace(precision_, lt_ != nullptr, dout.type, inp.type,
                                                  weight.type, N, C, OC)),
        stream_.get());
  }
  void matmul_gelu_forward(TensorOut out, TensorOut pre, TensorIn inp, TensorIn weight,
                           TensorIn bias, int N, int C, int OC) override {
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0, "matmul_gelu_forward",
                 cuda::dims({{"N", N}, {"C", C}, {"OC", OC}}));
    cuda::matmul_gelu_forward(
        cublas_.get(), lt_.get(), precision_, out, pre, inp, weight, bias, N, C, OC, gelu_exp2_,
        bf16_gelu_epilogue_,
        workspace(cuda::matmul_forward_workspace(precision_, lt_ != nullptr, inp.type, weight.type,
                                                 N, C, OC, pre.type, bias.data != nullptr)),
        stream_.get());
  }
  void gelu_matmul_backward(TensorOut dpre, float* dweight, float* dbias, TensorIn dout,
                            TensorIn inp, TensorIn pre, TensorIn weight, int N, int C,
                            int OC) override {
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0, "gelu_matmul_backward",
                 cuda::dims({{"N", N}, {"C", C}, {"OC", OC}}));
    cuda::gelu_matmul_backward(
        cublas_.get(), lt_.get(), precision_, dpre, dweight, dbias, dout, inp, pre, weight, N, C,
        OC,
        workspace(cuda::gelu_matmul_backward_workspace(precision_, lt_ != nullptr, dpre.type,
                                                       inp.type, weight.type, N, C, OC)),
        stream_.get());
  }
  // The tensor-core kernels read q, k and v rounded to bf16 (the fp32 ones read fp32 rows).
  bool attention_rounds_qkv(int C, int NH) const override {
    return tc_attention_ && cuda::attention_tc_supported(C, NH, max_shared_);
  }
  bool bf16_product_outputs() const override { return bf16_outputs_; }
  bool bf16_weight_copies() const override { return bf16_weights_; }
  DType attention_out_storage() const override {
    return bf16_attention_out_ ? DType::bf16 : DType::fp32;
  }
  DType branch_output_storage() const override {
    return bf16_branch_outputs_ ? DType::bf16 : DType::fp32;
  }
  void store(TensorOut dst, const float* src, std::size_t n) override {
    const std::size_t bytes = n * element_bytes(dst.type);
    CUDA_REQUIRE(!bytes_overlap(dst.data, bytes, src, n * sizeof(float)), "store",
                 std::string("the destination overlaps the source"));
    if (dst.type == DType::fp32)
      copy(dst.data, src, bytes);
    else if (n > 0)
      cuda::to_bf16(static_cast<__nv_bfloat16*>(dst.data), src, n, stream_.get());
  }
  void attention_forward(TensorOut out, float* lse, TensorIn qkv, int B, int T, int C,
                         int NH) override {
    CUDA_REQUIRE(B > 0 && T > 0 && C > 0, "attention_forward",
                 cuda::dims({{"B", B}, {"T", T}, {"C", C}}));
    if (tc_attention_ && cuda::attention_tc_supported(C, NH, max_shared_)) {
      cuda::attention_forward_tc(
          out, lse, qkv, B, T, C, NH, wide_forward_, heavy_first_,
          wgmma_forward_ && cuda::attention_wgmma_fits(C, NH, max_shared_),
          workspace(cuda::attention_tc_workspace(false, qkv.type, DType::fp32, B, T, C, NH)),
          stream_.get());
      return;
    }
    // The fp32 kernels write fp32: a bf16 out goes through the workspace, rounded once.
    const std::size_t n = std::size_t(B) * T * C;
    cuda::Workspace ws =
        workspace(out.type == DType::bf16 ? cuda::Workspace::aligned(n * sizeof(float)) : 0);
    float* o = out.type == DType::bf16 ? ws.take<float>(n) : static_cast<float*>(out.data);
    cuda::attention_forward(o, lse, fp32_qkv("attention_forward", qkv, C, NH), B, T, C, NH,
                            stream_.get());
    if (out.type == DType::bf16)
      cuda::to_bf16(static_cast<__nv_bfloat16*>(out.data), o, n, stream_.get());
  }
  void attention_backward(TensorOut dqkv, TensorIn dout, TensorIn qkv, TensorIn out,
                          const float* lse, int B, int T, int C, int NH) override {
    CUDA_REQUIRE(B > 0 && T > 0 && NH > 0, "attention_backward",
                 cuda::dims({{"B", B}, {"T", T}, {"NH", NH}}));
    if (tc_attention_ && cuda::attention_tc_supported(C, NH, max_shared_)) {
      const bool fused = fused_dq_ && cuda::attention_tc_fused_dq_fits(C, NH, max_shared_);
      cuda::attention_backward_tc(
          dqkv, dout, qkv, out, lse, B, T, C, NH, heavy_first_, fused,
          wgmma_backward_ && !fused && cuda::attention_wgmma_fits(C, NH, max_shared_),
          workspace(cuda::attention_tc_workspace(true, qkv.type, dout.type, B, T, C, NH, fused)),
          stream_.get());
      return;
    }
    // The fp32 kernels read an fp32 out and dout: bf16 ones widened (exact) into the workspace.
    const std::size_t n = std::size_t(B) * T * C;
    const std::size_t wide_bytes = cuda::Workspace::aligned(n * sizeof(float));
    cuda::Workspace ws = workspace(cuda::attention_backward_workspace(B, T, NH) +
                                   (out.type == DType::bf16 ? wide_bytes : 0) +
                                   (dout.type == DType::bf16 ? wide_bytes : 0));
    const auto fp32_of = [&](TensorIn t) {
      if (t.type == DType::fp32) return static_cast<const float*>(t.data);
      float* wide = ws.take<float>(n);
      cuda::from_bf16(wide, static_cast<const __nv_bfloat16*>(t.data), n, stream_.get());
      return static_cast<const float*>(wide);
    };
    const float* o = fp32_of(out);
    const float* g = fp32_of(dout);
    cuda::attention_backward(fp32_dqkv(dqkv, C, NH), g, fp32_qkv("attention_backward", qkv, C, NH),
                             o, lse, B, T, C, NH, ws, stream_.get());
  }
  void gelu_forward(TensorOut out, TensorIn inp, std::size_t n) override {
    cuda::gelu_forward(out, inp, n, gelu_exp2_, stream_.get());
  }
  void gelu_backward(TensorOut dinp, TensorIn inp, const float* dout, std::size_t n) override {
    cuda::gelu_backward(dinp, inp, dout, n, stream_.get());
  }
  void residual_forward(float* out, const float* a, const float* b, std::size_t n) override {
    cuda::residual_forward(out, a, b, n, stream_.get());
  }
  void residual_layernorm_forward(float* residual, TensorOut out, float* mean, float* rstd,
                                  const float* a, TensorIn b, const float* weight,
                                  const float* bias, int N, int C) override {
    cuda::residual_layernorm_forward(residual, out, mean, rstd, a, b, weight, bias, N, C,
                                     layernorm_vec4_, stream_.get());
  }
  void classifier(TensorOut logits, float* losses, const int* targets, float dloss,
                  TensorOut dlogits, int N, int V, int Vp) override {
    cuda::classifier(logits, losses, targets, dloss, dlogits, N, V, Vp, classifier_, stream_.get());
  }
  void adamw(float* params, float* m, float* v, const float* grads, std::size_t n,
             const AdamWArgs& args, std::uint16_t* params16) override {
    cuda::adamw(params, m, v, grads, n, args, reinterpret_cast<__nv_bfloat16*>(params16),
                stream_.get());
  }
  double sum_squares(const float* x, std::size_t n) override {
    return cuda::sum_squares(x, n, workspace(cuda::sum_squares_workspace()), stream_.get());
  }
  void weighted_sum(float* out, const float* const* inputs, const float* weights, int k,
                    std::size_t n) override {
    cuda::weighted_sum(out, inputs, weights, k, n, stream_.get());
  }
  void scale(float* x, float alpha, std::size_t n) override {
    cuda::scale(x, alpha, n, stream_.get());
  }

 private:
  // At least `bytes` of device memory for one op. Ops run in order on the one stream, so one
  // buffer serves them all; it is replaced only after the stream has drained.
  cuda::Workspace workspace(std::size_t bytes) {
    if (bytes > workspace_bytes_) {
      synchronize();
      cudaFree(workspace_);
      workspace_ = nullptr;
      workspace_bytes_ = 0;
      const std::size_t grown = CEIL_DIV(bytes, std::size_t(1) << 20) << 20;  // whole MiB
      workspace_ = allocate(grown);
      workspace_bytes_ = grown;
    }
    return {static_cast<char*>(workspace_), workspace_bytes_};
  }

  // The fp32 kernels' dqkv: refuses a bf16 one, which only the tensor-core kernels write.
  static float* fp32_dqkv(TensorOut dqkv, int C, int NH) {
    CUDA_REQUIRE(dqkv.type == DType::fp32, "attention_backward",
                 "a bf16 dqkv, which only the tensor-core kernels write (cuda-bf16 with "
                 "MIXSIM_TC_ATTENTION on and head size a multiple of 16 up to 128): " +
                     cuda::dims({{"C", C}, {"NH", NH}}));
    return static_cast<float*>(dqkv.data);
  }
  // The fp32 kernels' qkv: refuses a bf16 one (attention_rounds_qkv says where that is allowed).
  static const float* fp32_qkv(const char* op, TensorIn qkv, int C, int NH) {
    CUDA_REQUIRE(qkv.type == DType::fp32, op,
                 "a bf16 qkv, which only the tensor-core kernels read (cuda-bf16 with "
                 "MIXSIM_TC_ATTENTION on and head size a multiple of 16 up to 128): " +
                     cuda::dims({{"C", C}, {"NH", NH}}));
    return static_cast<const float*>(qkv.data);
  }

  int device_;
  MatmulPrecision precision_;
  bool tc_attention_;  // attention on bf16 tensor cores (attention_tc.cu), where the shape allows
  bool bf16_activations_;    // activation_storage() is bf16
  bool bf16_outputs_;        // bf16_product_outputs()
  bool bf16_weights_;        // bf16_weight_copies()
  bool wide_forward_;        // attention's forward in blocks of 128 rows (MIXSIM_TC_WIDE_FORWARD)
  cuda::ClassifierForm classifier_;  // MIXSIM_CLASSIFIER_EXP2, MIXSIM_CLASSIFIER_TWO_ROWS
  bool gelu_exp2_;           // the GELU kernel on the hardware's ex2 (MIXSIM_GELU_EXP2)
  bool bf16_attention_out_;  // attention_out_storage() is bf16 (MIXSIM_BF16_ATTENTION_OUT)
  bool bf16_branch_outputs_;  // branch_output_storage() is bf16 (MIXSIM_BF16_BRANCH_OUTPUTS)
  bool layernorm_vec4_;      // LayerNorm with 16-byte accesses (MIXSIM_LAYERNORM_VEC4)
  bool heavy_first_;  // tensor-core attention's longest blocks first (MIXSIM_ATTENTION_HEAVY_FIRST)
  bool fused_dq_;  // tensor-core attention's dq in the key-major kernel (MIXSIM_ATTENTION_FUSED_DQ)
  // the tensor-core forward on wgmma (MIXSIM_ATTENTION_WGMMA), and its backward's two kernels
  // (MIXSIM_ATTENTION_WGMMA_BACKWARD): false where the device does not run the sm_90a code
  bool wgmma_forward_;
  bool wgmma_backward_;
  bool bf16_gelu_epilogue_;  // a bf16 fc layer's GELU in cuBLASLt's epilogue (MIXSIM_BF16_GELU_..)
  bool feeds_products_;      // LayerNorm feeds the next projection (MIXSIM_LAYERNORM_FEEDS_PRODUCT)
  std::size_t max_shared_;   // the device's shared memory per block (opt-in)
  Stream stream_;
  Cublas cublas_;
  cuda::LtMatmulPtr lt_;  // null when MIXSIM_CUBLASLT is off
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
};

// `backend` as the CUDA backend it must be; `who` (the function asking) is named otherwise.
CudaBackend& cuda_backend(Backend& backend, const std::string& who) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (!cuda)
    throw Error(who + " was given the '" + std::string(backend.name()) +
                "' backend; it needs a backend from make_cuda_backend");
  return *cuda;
}

}  // namespace

namespace cuda {

BackendPlace place_of(Backend& backend) {
  CudaBackend& cuda = cuda_backend(backend, "an op of the CUDA backend");
  return {cuda.device(), cuda.stream()};
}

}  // namespace cuda

CublasLtUse cublaslt_use(Backend& backend) {
  return cuda_backend(backend, "cublaslt_use()").cublaslt_use();
}

CudaKernelChoices cuda_kernel_choices(Backend& backend) {
  return cuda_backend(backend, "cuda_kernel_choices()").kernel_choices();
}

std::unique_ptr<Backend> make_cuda_backend(int device, MatmulPrecision precision) {
  return std::make_unique<CudaBackend>(device, precision);
}

}  // namespace mixsim
