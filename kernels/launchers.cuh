// The kernel launchers of the CUDA backend, one group per .cu file. Shapes, argument order and
// gradient semantics are those of the matching Backend ops (backend/ops.hpp); every launcher
// checks its assumptions, runs on `stream` and checks the launch. Ops that need temporary device
// memory take a Workspace of at least the size their *_workspace() function names.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "cuda_common.cuh"
#include "mixsim/backend/cublaslt_choices.hpp"
#include "mixsim/backend/cuda.hpp"
#include "mixsim/backend/ops.hpp"

namespace mixsim::cuda {

// Temporary device memory handed to one op, carved into pieces aligned to 256 bytes (what
// cub and vector loads want). Pieces are valid until the op's kernels have run.
struct Workspace {
  static constexpr std::size_t kAlign = 256;
  static std::size_t aligned(std::size_t bytes) { return CEIL_DIV(bytes, kAlign) * kAlign; }

  char* ptr = nullptr;
  std::size_t bytes = 0;

  template <class T>
  T* take(std::size_t count) {
    const std::size_t size = aligned(count * sizeof(T));
    if (size > bytes)
      throw Error("CUDA backend: an op asked for " + std::to_string(size) +
                  " bytes of workspace but only " + std::to_string(bytes) +
                  " are left (a workspace size function is wrong)");
    T* p = reinterpret_cast<T*>(ptr);
    ptr += size;
    bytes -= size;
    return p;
  }
};

// Calls fn with the tensor's data as the pointer type its storage type names: float* or
// __nv_bfloat16* (to const for a TensorIn). The one place where a launcher turns a stored type
// into a kernel's template argument.
template <class Fn>
void typed(TensorOut t, Fn&& fn) {
  if (t.type == DType::bf16)
    fn(static_cast<__nv_bfloat16*>(t.data));
  else
    fn(static_cast<float*>(t.data));
}
template <class Fn>
void typed(TensorIn t, Fn&& fn) {
  if (t.type == DType::bf16)
    fn(static_cast<const __nv_bfloat16*>(t.data));
  else
    fn(static_cast<const float*>(t.data));
}

// aligned_to<K> of a tensor's data as the type it stores (K elements: four floats are 16 bytes,
// four bf16 8); a null tensor counts as aligned.
template <int K>
bool stored_aligned_to(TensorIn t) {
  bool aligned = false;
  typed(t, [&](auto* p) { aligned = aligned_to<K>(p); });
  return aligned;
}

// Parameter gradients summed over rows are formed as partial sums over chunks of this many rows,
// then the partials are added in chunk order: fixed order, no atomics (reduce.cu).
constexpr int kRowChunk = 256;

// ---- reduce.cu: dst[c] += sum over rows of x[r, c] (x is (N, C), fp32 or bf16), deterministic;
// with `rounded` (an fp32 x only), the same pass also writes x rounded to bf16 there (N x C).
std::size_t column_sums_workspace(int N, int C);
void column_sums_accumulate(float* dst, TensorIn x, int N, int C, Workspace ws, cudaStream_t stream,
                            __nv_bfloat16* rounded = nullptr);
// dst[c] += sum over k = 0..chunks-1 of partials[k, c], in a fixed order.
void accumulate_partials(float* dst, const float* partials, int chunks, int C, cudaStream_t stream);
// The same for two (dst, partials) pairs of one shape in one launch (LayerNorm's weight and bias
// gradients), each summed exactly as accumulate_partials sums it.
void accumulate_partials(float* dst0, const float* partials0, float* dst1, const float* partials1,
                         int chunks, int C, cudaStream_t stream);
// And for three (LayerNorm's, and the bias gradient of the projection it feeds).
void accumulate_partials(float* dst0, const float* partials0, float* dst1, const float* partials1,
                         float* dst2, const float* partials2, int chunks, int C,
                         cudaStream_t stream);

// ---- encoder.cu
void encoder_forward(float* out, const int* tokens, const float* wte, const float* wpe, int B,
                     int T, int C, cudaStream_t stream);
std::size_t encoder_backward_workspace(int B, int T);
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* tokens, int B, int T,
                      int C, Workspace ws, cudaStream_t stream);

// ---- layernorm.cu
// vec4: the forward with 16-byte accesses where C and the arrays allow (MIXSIM_LAYERNORM_VEC4).
void layernorm_forward(TensorOut out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, bool vec4,
                       cudaStream_t stream);
// residual = a + b (may alias a or b; b fp32 or bf16, widened), then layernorm_forward of it, in
// one pass
void residual_layernorm_forward(float* residual, TensorOut out, float* mean, float* rstd,
                                const float* a, TensorIn b, const float* weight, const float* bias,
                                int N, int C, bool vec4, cudaStream_t stream);
// feed: with layernorm_backward's product_dbias.
std::size_t layernorm_backward_workspace(int N, int C, bool feed = false);
// vec4: the fused backward (C up to 1024) with 16-byte accesses where C and the arrays allow.
// product_dbias (nullable): the updated dinp also feeds a projection's backward
// (MIXSIM_LAYERNORM_FEEDS_PRODUCT): its column sums are added into product_dbias, and with copy
// it is written rounded to bf16 into copy (N,C), in the same pass where C allows the fused
// kernel, else by column_sums_accumulate after it. dout fp32 or bf16 (widened).
void layernorm_backward(float* dinp, float* dweight, float* dbias, TensorIn dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C,
                        bool vec4, Workspace ws, cudaStream_t stream,
                        float* product_dbias = nullptr, __nv_bfloat16* copy = nullptr);

// ---- cuda_backend.cu: the device and stream of a backend made by make_cuda_backend (Error for
// any other backend): what NCCL enqueues on.
struct BackendPlace {
  int device;
  cudaStream_t stream;
};
BackendPlace place_of(Backend& backend);

// ---- matmul.cu (cuBLAS: fp32 without TF32, or bf16 operands on tensor cores, fp32 accumulation;
// with an LtMatmul, cuBLASLt with the bias and GELU fused into the products' epilogues)
class LtMatmul;
struct LtMatmulDeleter {
  void operator()(LtMatmul* lt) const noexcept;
};
using LtMatmulPtr = std::unique_ptr<LtMatmul, LtMatmulDeleter>;
struct LtOptions {
  // each problem's algorithm timed among cuBLASLt's first candidates on its first call
  // (MIXSIM_CUBLASLT_TUNE), not the heuristic's first answer
  bool tune = false;
  // with tune: the choices table file that each choice is merged into as it is made
  // (MIXSIM_CUBLASLT_TUNE_OUT; "" for none)
  std::string tune_out;
  // without tune: the choices to run where they name a problem on this device and cuBLASLt
  // version (the build's kernels/cublaslt_choices.txt, or MIXSIM_CUBLASLT_CHOICES_FILE); null
  // for none
  std::shared_ptr<const cublaslt::Choices> choices;
};
LtMatmulPtr make_lt_matmul(LtOptions options = {});
// kernels/cublaslt_choices.txt, as the build found it (cublaslt_choices_table.cu.in).
extern const char* const kBuiltinCublasLtChoices;
const CublasLtUse& lt_use(const LtMatmul& lt);

void set_fp32_math(cublasHandle_t handle);
// The workspace functions take whether the op gets an LtMatmul (its products may take cuBLASLt
// workspace) and how the typed inputs are stored (an operand stored otherwise than the products
// take it is converted into the workspace), the weight's included.
// `out`: the product's result (matmul_gelu_forward's pre), `bias`: whether it takes one.
std::size_t matmul_forward_workspace(MatmulPrecision precision, bool lt, DType inp, DType weight,
                                     int N, int C, int OC, DType out, bool bias);
void matmul_forward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision, TensorOut out,
                    TensorIn inp, TensorIn weight, TensorIn bias, int N, int C, int OC,
                    Workspace ws, cudaStream_t stream);
// The same workspace as matmul_forward. gelu_exp2: the GELU kernel's form (gelu_forward), where
// it runs rather than cuBLASLt's epilogue. bf16_epilogue: a bf16 out and pre through cuBLASLt's
// GELU epilogue too (MIXSIM_BF16_GELU_EPILOGUE), not the BIAS epilogue and the GELU kernel.
void matmul_gelu_forward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision,
                         TensorOut out, TensorOut pre, TensorIn inp, TensorIn weight, TensorIn bias,
                         int N, int C, int OC, bool gelu_exp2, bool bf16_epilogue, Workspace ws,
                         cudaStream_t stream);
std::size_t matmul_backward_workspace(MatmulPrecision precision, bool lt, DType dout, DType inp,
                                      DType weight, int N, int C, int OC);
// dinp: fp32, or (bf16 products) bf16, the product's fp32 sums rounded as cuBLAS stores them.
// lt: may be null; dinp goes through cuBLASLt only with `tune` or where its choices table names
// the product (LtMatmul::run's `plain`).
void matmul_backward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision, TensorOut dinp,
                     float* dweight, float* dbias, TensorIn dout, TensorIn inp, TensorIn weight,
                     int N, int C, int OC, Workspace ws, cudaStream_t stream);
std::size_t gelu_matmul_backward_workspace(MatmulPrecision precision, bool lt, DType dpre,
                                           DType inp, DType weight, int N, int C, int OC);
// dpre and pre of one type: fp32, or (bf16 products) bf16.
void gelu_matmul_backward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision,
                          TensorOut dpre, float* dweight, float* dbias, TensorIn dout, TensorIn inp,
                          TensorIn pre, TensorIn weight, int N, int C, int OC, Workspace ws,
                          cudaStream_t stream);

// ---- attention.cu (fused causal attention; head size up to kMaxHeadSize)
constexpr int kMaxHeadSize = 128;
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream);
std::size_t attention_backward_workspace(int B, int T, int NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH, Workspace ws,
                        cudaStream_t stream);

// ---- attention_tc.cu (the same ops on bf16 tensor cores, mma.sync, for cuda-bf16 unless
// MIXSIM_TC_ATTENTION=0; head sizes 16..128 in steps of 16 whose kernels fit the device's shared
// memory per block (max_shared_per_block)). qkv may be fp32 (rounded into the workspace) or bf16;
// workspace: attention_tc_workspace.
std::size_t max_shared_per_block(int device);
bool attention_tc_supported(int C, int NH, std::size_t max_shared);
// Whether the fused dq's kernel also fits (MIXSIM_ATTENTION_FUSED_DQ; where it does not, the
// backward runs the default kernels).
bool attention_tc_fused_dq_fits(int C, int NH, std::size_t max_shared);
// Whether `device` runs the build's sm_90a code, the wgmma kernels (MIXSIM_ATTENTION_WGMMA,
// MIXSIM_ATTENTION_WGMMA_BACKWARD): an H100 or H200 with sm_90a among the build's CUDA
// architectures. Asked of the device by a probe kernel (a launch and a copy): the backend asks
// once, when it is made.
bool wgmma_runs_on(int device);
// Whether the wgmma kernels take this shape: head size 64 or 128, their shared memory fits.
bool attention_wgmma_fits(int C, int NH, std::size_t max_shared);
// backward: D per row, and a bf16 copy of dout where it is stored in fp32 (`dout`, backward only).
// fused_dq: dq's running sums and the semaphores of the fused dq (backward only).
std::size_t attention_tc_workspace(bool backward, DType qkv, DType dout, int B, int T, int C,
                                   int NH, bool fused_dq = false);
// wide: forward_kernel<HS, 2> where the head size is up to 64 (MIXSIM_TC_WIDE_FORWARD; the same
// results bit for bit). heavy_first: every head's longest blocks start first
// (MIXSIM_ATTENTION_HEAVY_FIRST; the same results bit for bit). fused_dq: dq summed in the
// key-major kernel, no dq kernel (MIXSIM_ATTENTION_FUSED_DQ; dq, dk and dv within rounding of
// the default's, the same on every run).
// wgmma: the forward on Hopper's warpgroup products (MIXSIM_ATTENTION_WGMMA; where
// wgmma_runs_on and attention_wgmma_fits say so; out and lse within rounding of the default's).
// out: fp32, or bf16 (rounded as the kernel stores it; backward reads it as stored).
void attention_forward_tc(TensorOut out, float* lse, TensorIn qkv, int B, int T, int C, int NH,
                          bool wide, bool heavy_first, bool wgmma, Workspace ws,
                          cudaStream_t stream);
// wgmma: the backward's two kernels on wgmma (MIXSIM_ATTENTION_WGMMA_BACKWARD; where
// wgmma_runs_on and attention_wgmma_fits say so; not with fused_dq, which keeps its mma.sync
// kernel).
void attention_backward_tc(TensorOut dqkv, TensorIn dout, TensorIn qkv, TensorIn out,
                           const float* lse, int B, int T, int C, int NH, bool heavy_first,
                           bool fused_dq, bool wgmma, Workspace ws, cudaStream_t stream);

// ---- gelu.cu
// exp2: on the hardware's ex2 and reciprocal (MIXSIM_GELU_EXP2; within a few ulps of the CPU's
// form)
void gelu_forward(TensorOut out, TensorIn inp, std::size_t n, bool exp2, cudaStream_t stream);
void gelu_backward(TensorOut dinp, TensorIn inp, const float* dout, std::size_t n,
                   cudaStream_t stream);

// ---- residual.cu
void residual_forward(float* out, const float* a, const float* b, std::size_t n,
                      cudaStream_t stream);

// ---- classifier.cu
// The cached kernel's forms (classifier.cu), as the environment chose them (cuda_backend.cu).
struct ClassifierForm {
  bool exp2 = true;       // MIXSIM_CLASSIFIER_EXP2: exponentials through exp2
  bool two_rows = false;  // MIXSIM_CLASSIFIER_TWO_ROWS=1: two rows an SM where they fit
};
void classifier(TensorOut logits, float* losses, const int* targets, float dloss, TensorOut dlogits,
                int N, int V, int Vp, ClassifierForm form, cudaStream_t stream);

// ---- optimizer.cu
// params16: null, or the updated params rounded to bf16 (narrow), written in the same pass.
void adamw(float* params, float* m, float* v, const float* grads, std::size_t n,
           const AdamWArgs& args, __nv_bfloat16* params16, cudaStream_t stream);
std::size_t sum_squares_workspace();
// Waits for the result: the host needs it (gradient clipping).
double sum_squares(const float* x, std::size_t n, Workspace ws, cudaStream_t stream);

// ---- buffers.cu
void weighted_sum(float* out, const float* const* inputs, const float* weights, int k,
                  std::size_t n, cudaStream_t stream);
void scale(float* x, float alpha, std::size_t n, cudaStream_t stream);
// out = in rounded to bf16 (to nearest even), and back (exact).
void to_bf16(__nv_bfloat16* out, const float* in, std::size_t n, cudaStream_t stream);
void from_bf16(float* out, const __nv_bfloat16* in, std::size_t n, cudaStream_t stream);

}  // namespace mixsim::cuda
