// The fused softmax + cross-entropy: one block per row computes the row's max and the sum of
// exponentials (block reductions in a fixed order), the loss, and for training overwrites the
// logits in place with dloss * (softmax - onehot), or writes them as bf16 into a buffer of their
// own (the logits then stay); the probabilities are never stored. Every element is read and
// written by the same thread, and the target's logit is read by all threads before the first
// barrier, so the in-place writes race with nothing.
#include <cstdint>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / kWarpSize;

// Reduces v over the block with op; every thread gets the same result (partials of the warps
// combined in warp order). Ends with a barrier, so `scratch` can be reused at once.
template <class Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}

struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// dlogits: null (no gradient), the logits themselves (fp32, in place), or a bf16 buffer.
template <class Grad>
__global__ void __launch_bounds__(kThreads)
    classifier_kernel(const float* logits, Grad* dlogits, float* losses, const int* targets,
                      float dloss, int V, int Vp) {
  __shared__ float scratch[kWarps];
  const float* row = logits + std::size_t(blockIdx.x) * Vp;
  Grad* grad = dlogits ? dlogits + std::size_t(blockIdx.x) * Vp : nullptr;
  const bool write = grad != nullptr;
  const int target = targets[blockIdx.x];
  if (target < 0) {  // a skipped position: no loss, no gradient (the whole block)
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.f;
    if (write)
      for (int j = threadIdx.x; j < Vp; j += kThreads) store(grad + j, 0.f);
    return;
  }
  const float target_logit = row[target];
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += kThreads) mx = fmaxf(mx, row[j]);
  mx = block_reduce(mx, scratch, Max{});
  float sum = 0.f;
  for (int j = threadIdx.x; j < V; j += kThreads) sum += expf(row[j] - mx);
  sum = block_reduce(sum, scratch, Sum{});
  if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + mx - target_logit;
  if (!write) return;
  const float k = dloss / sum;
  for (int j = threadIdx.x; j < V; j += kThreads) {
    float g = __fmul_rn(expf(row[j] - mx), k);
    if (j == target) g -= dloss;
    store(grad + j, g);
  }
  for (int j = V + threadIdx.x; j < Vp; j += kThreads) store(grad + j, 0.f);
}

}  // namespace

void classifier(float* logits, float* losses, const int* targets, float dloss, TensorOut dlogits,
                int N, int V, int Vp, cudaStream_t stream) {
  CUDA_REQUIRE(N > 0 && V > 0 && V <= Vp, "classifier", dims({{"N", N}, {"V", V}, {"Vp", Vp}}));
  CUDA_REQUIRE(dlogits.type == DType::bf16 || !dlogits.data || dlogits.data == logits,
               "classifier (fp32 dlogits are written in place)",
               std::string("dlogits apart from the logits"));
  const auto d = reinterpret_cast<std::uintptr_t>(dlogits.data),
             l = reinterpret_cast<std::uintptr_t>(logits);
  const std::size_t n = std::size_t(N) * Vp;
  CUDA_REQUIRE(dlogits.type == DType::fp32 || d + 2 * n <= l || l + 4 * n <= d,
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
