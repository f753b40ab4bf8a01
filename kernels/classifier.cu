// The fused softmax + cross-entropy: one block per row computes the row's max and the sum of
// exponentials in one pass over the row (an online softmax: each thread keeps a running max and a
// sum rescaled whenever the max grows; the threads' pairs are merged in a fixed order), the loss,
// and for training, in a second pass, overwrites the logits in place with
// dloss * (softmax - onehot) (fp32 logits, or bf16 ones, read as stored), or writes the gradient
// of fp32 logits as bf16 into a buffer of their own (the logits then stay); the probabilities
// are never stored. Every element is read and
// written by the same thread, and the target's logit is read by all threads before the first
// barrier, so the in-place writes race with nothing.

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / kWarpSize;

// A max m and the sum s of exp(x - m) over some of a row's logits.
struct MaxSum {  // a plain aggregate: it also lives in shared memory
  float m;
  float s;
};

// The pair of the union of two parts. Symmetric bit for bit (fmaxf, then two products and one
// sum each rounded on its own: no FMA contraction), so the butterfly below leaves every lane with
// the same result.
__device__ inline MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, a.s + b.s};  // 0, or NaN from NaN logits: kept
  return {m, __fadd_rn(__fmul_rn(a.s, expf(a.m - m)), __fmul_rn(b.s, expf(b.m - m)))};
}

// Merges the threads' pairs over the block; every thread gets the same result (the warps'
// partials merged in warp order). Ends with a barrier, so `scratch` can be reused at once.
__device__ MaxSum block_merge(MaxSum v, MaxSum* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = merge(v,
              {__shfl_xor_sync(kFullMask, v.m, offset), __shfl_xor_sync(kFullMask, v.s, offset)});
  if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  MaxSum r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = merge(r, scratch[w]);
  __syncthreads();
  return r;
}

// dlogits: null (no gradient), the logits themselves (in place, of their type), or, of fp32
// logits, a bf16 buffer.
template <class In, class Grad>
__global__ void __launch_bounds__(kThreads)
    classifier_kernel(const In* logits, Grad* dlogits, float* losses, const int* targets,
                      float dloss, int V, int Vp) {
  __shared__ MaxSum scratch[kWarps];
  const In* row = logits + std::size_t(blockIdx.x) * Vp;
  Grad* grad = dlogits ? dlogits + std::size_t(blockIdx.x) * Vp : nullptr;
  const bool write = grad != nullptr;
  const int target = targets[blockIdx.x];
  if (target < 0) {  // a skipped position: no loss, no gradient (the whole block)
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.f;
    if (write)
      for (int j = threadIdx.x; j < Vp; j += kThreads) store(grad + j, 0.f);
    return;
  }
  const float target_logit = load(row + target);
  // One read of the row for both (the logits of a GPT-2 batch, 1.6 GB at B 8, do not stay in
  // L2 between passes): a larger logit rescales the sum so far.
  MaxSum part{-INFINITY, 0.f};
  for (int j = threadIdx.x; j < V; j += kThreads) {
    const float x = load(row + j);
    if (x > part.m) {
      part.s = part.s * expf(part.m - x) + 1.f;
      part.m = x;
    } else if (x != -INFINITY) {  // (a NaN still makes the sum NaN)
      part.s += expf(x - part.m);
    }
  }
  const MaxSum total = block_merge(part, scratch);
  const float mx = total.m, sum = total.s;
  if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + mx - target_logit;
  if (!write) return;
  const float k = dloss / sum;
  for (int j = threadIdx.x; j < V; j += kThreads) {
    float g = __fmul_rn(expf(load(row + j) - mx), k);
    if (j == target) g -= dloss;
    store(grad + j, g);
  }
  for (int j = V + threadIdx.x; j < Vp; j += kThreads) store(grad + j, 0.f);
}

}  // namespace

void classifier(TensorOut logits_t, float* losses, const int* targets, float dloss,
                TensorOut dlogits, int N, int V, int Vp, cudaStream_t stream) {
  CUDA_REQUIRE(N > 0 && V > 0 && V <= Vp, "classifier", dims({{"N", N}, {"V", V}, {"Vp", Vp}}));
  if (logits_t.type == DType::bf16) {  // read as stored; the gradient in place, or none
    CUDA_REQUIRE(!dlogits.data || (dlogits.type == DType::bf16 && dlogits.data == logits_t.data),
                 "classifier (the dlogits of bf16 logits are written in place)",
                 std::string("dlogits apart from the logits"));
    auto* logits = static_cast<__nv_bfloat16*>(logits_t.data);
    classifier_kernel<<<N, kThreads, 0, stream>>>(
        logits, dlogits.data ? logits : static_cast<__nv_bfloat16*>(nullptr), losses, targets,
        dloss, V, Vp);
    CUDA_CHECK_LAUNCH(classifier_kernel);
    return;
  }
  const float* logits = static_cast<const float*>(logits_t.data);
  CUDA_REQUIRE(dlogits.type == DType::bf16 || !dlogits.data || dlogits.data == logits,
               "classifier (fp32 dlogits are written in place)",
               std::string("dlogits apart from the logits"));
  const std::size_t n = std::size_t(N) * Vp;
  CUDA_REQUIRE(
      dlogits.type == DType::fp32 ||
          !bytes_overlap(dlogits.data, n * element_bytes(DType::bf16), logits, n * sizeof(float)),
      "classifier (bf16 dlogits in a buffer of their own)",
      std::string("bf16 dlogits overlapping the logits"));
  if (dlogits.type == DType::bf16)
    classifier_kernel<<<N, kThreads, 0, stream>>>(logits, static_cast<__nv_bfloat16*>(dlogits.data),
                                                  losses, targets, dloss, V, Vp);
  else
    classifier_kernel<<<N, kThreads, 0, stream>>>(logits, static_cast<float*>(dlogits.data), losses,
                                                  targets, dloss, V, Vp);
  CUDA_CHECK_LAUNCH(classifier_kernel);
}

}  // namespace mixsim::cuda
