// AdamW and the squared gradient norm.
// AdamW spells every operation with a round-to-nearest intrinsic: no multiply-add is contracted,
// so each element sees exactly the float operations of the CPU backend, in the same order, and
// the updates are bit-identical to it. Given params16, it also stores each updated parameter
// rounded to bf16 (narrow: the rounding of convert_kernel, which made the model's bf16 weight
// copy at each forward pass before): 2 more bytes written an element, where a separate copy
// read 4 and wrote 2 (Gpt::update).
// sum_squares is deterministic: a fixed grid (from n only) of blocks adds fixed strided elements
// (16-byte vectors of them where x is so aligned) in double and reduces them in a fixed tree; one
// block then adds the block sums the same way.
#include <algorithm>
#include <utility>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSumThreads = 256;  // a power of two: the tree reductions below halve it
constexpr int kSumBlocks = 1024;  // at most; the final reduction is one block over these

struct AdamWConstants {
  float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay, grad_scale, inv_bc1,
      inv_bc2;
};

// One element's update; both kernels below run exactly this.
__device__ inline void adamw_element(float& p, float& m, float& v, float grad,
                                     const AdamWConstants& a) {
  const float g = __fmul_rn(grad, a.grad_scale);
  m = __fadd_rn(__fmul_rn(a.beta1, m), __fmul_rn(a.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(a.beta2, v), __fmul_rn(__fmul_rn(a.one_minus_beta2, g), g));
  const float update =
      __fdiv_rn(__fmul_rn(m, a.inv_bc1), __fadd_rn(__fsqrt_rn(__fmul_rn(v, a.inv_bc2)), a.eps));
  p = __fsub_rn(p, __fmul_rn(a.lr, __fadd_rn(update, __fmul_rn(a.weight_decay, p))));
}

__global__ void adamw_kernel(float* params, float* m, float* v, const float* grads,
                             __nv_bfloat16* params16, std::size_t n, AdamWConstants a) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    adamw_element(params[i], m[i], v[i], grads[i], a);
    if (params16) params16[i] = narrow<__nv_bfloat16>(params[i]);
  }
}

// The same on 16-byte vectors: a quarter of the loads and stores, each four times as wide (the
// update reads 16 and writes 12 bytes an element; memory-bound).
__global__ void adamw4_kernel(float4* params, float4* m, float4* v, const float4* grads,
                              Pack<__nv_bfloat16, 4>* params16, std::size_t n4, AdamWConstants a) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 p = params[i], mi = m[i], vi = v[i];
    const float4 g = grads[i];
    adamw_element(p.x, mi.x, vi.x, g.x, a);
    adamw_element(p.y, mi.y, vi.y, g.y, a);
    adamw_element(p.z, mi.z, vi.z, g.z, a);
    adamw_element(p.w, mi.w, vi.w, g.w, a);
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (params16)
      params16[i] = {{narrow<__nv_bfloat16>(p.x), narrow<__nv_bfloat16>(p.y),
                      narrow<__nv_bfloat16>(p.z), narrow<__nv_bfloat16>(p.w)}};
  }
}

// Tree sum of the block's kSumThreads values in `s`; thread 0 gets the total.
__device__ double block_tree_sum(double* s) {
  for (int half = kSumThreads / 2; half > 0; half >>= 1) {
    if (int(threadIdx.x) < half) s[threadIdx.x] += s[threadIdx.x + half];
    __syncthreads();
  }
  return s[0];
}

__global__ void __launch_bounds__(kSumThreads)
    sum_squares_partials_kernel(double* partials, const float* x, std::size_t n4, std::size_t n) {
  __shared__ double s[kSumThreads];
  double acc = 0.0;
  const auto add = [&](double xi) { acc += xi * xi; };
  // 16-byte loads (four elements a load: more bytes in flight per thread), n4 groups of them
  // where x is so aligned, then the rest one by one (for_groups4 in cuda_common.cuh)
  for_groups4(
      n4, n,
      [&](std::size_t i) {
        const Pack<float, 4> q = load4(x, i);
#pragma unroll
        for (int k = 0; k < 4; ++k) add(q.e[k]);
      },
      [&](std::size_t i) { add(x[i]); });
  s[threadIdx.x] = acc;
  __syncthreads();
  const double total = block_tree_sum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kSumThreads)
    sum_squares_final_kernel(double* result, const double* partials, int count) {
  __shared__ double s[kSumThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += kSumThreads) acc += partials[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  const double total = block_tree_sum(s);
  if (threadIdx.x == 0) *result = total;
}

}  // namespace

void adamw(float* params, float* m, float* v, const float* grads, std::size_t n,
           const AdamWArgs& args, __nv_bfloat16* params16, cudaStream_t stream) {
  CUDA_REQUIRE(args.bias_correction1 > 0 && args.bias_correction2 > 0, "adamw",
               std::string("bias corrections > 0 (the step count starts at 1)"));
  if (n == 0) return;
  // The same float constants as the CPU backend computes.
  const AdamWConstants a{args.lr,
                         args.beta1,
                         args.beta2,
                         1.0f - args.beta1,
                         1.0f - args.beta2,
                         args.eps,
                         args.weight_decay,
                         args.grad_scale,
                         1.0f / args.bias_correction1,
                         1.0f / args.bias_correction2};
  // The four arrays as 16-byte vectors where they are equally aligned (the per-tensor calls are
  // at the same offset into each), and params16 as 8-byte ones at the same elements: the elements
  // before the first aligned one and after the last whole vector one element at a time. The same
  // operations per element either way.
  std::size_t head = n, n4 = 0;
  const auto misalign = reinterpret_cast<std::uintptr_t>(params) % 16;
  if (misalign % sizeof(float) == 0 && reinterpret_cast<std::uintptr_t>(m) % 16 == misalign &&
      reinterpret_cast<std::uintptr_t>(v) % 16 == misalign &&
      reinterpret_cast<std::uintptr_t>(grads) % 16 == misalign &&
      (!params16 || reinterpret_cast<std::uintptr_t>(params16) % 8 == misalign / 2)) {
    head = std::min(n, ((16 - misalign) % 16) / sizeof(float));
    n4 = (n - head) / 4;
  }
  const std::size_t tail = n - head - 4 * n4;
  if (n4 > 0) {
    adamw4_kernel<<<elementwise_blocks(n4, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(params + head), reinterpret_cast<float4*>(m + head),
        reinterpret_cast<float4*>(v + head), reinterpret_cast<const float4*>(grads + head),
        params16 ? reinterpret_cast<Pack<__nv_bfloat16, 4>*>(params16 + head) : nullptr, n4, a);
    CUDA_CHECK_LAUNCH(adamw4_kernel);
  }
  // head and tail: one launch when both are there (n4 == 0: they are one range)
  for (const auto& [first, count] : {std::pair{std::size_t(0), n4 > 0 ? head : n},
                                     std::pair{head + 4 * n4, n4 > 0 ? tail : 0}}) {
    if (count == 0) continue;
    adamw_kernel<<<elementwise_blocks(count, kThreads), kThreads, 0, stream>>>(
        params + first, m + first, v + first, grads + first, params16 ? params16 + first : nullptr,
        count, a);
    CUDA_CHECK_LAUNCH(adamw_kernel);
  }
}

std::size_t sum_squares_workspace() {
  return Workspace::aligned(kSumBlocks * sizeof(double)) + Workspace::aligned(sizeof(double));
}

double sum_squares(const float* x, std::size_t n, Workspace ws, cudaStream_t stream) {
  if (n == 0) return 0.0;
  double* partials = ws.take<double>(kSumBlocks);
  double* result = ws.take<double>(1);
  const std::size_t wanted = CEIL_DIV(n, std::size_t(kSumThreads));
  const int blocks = int(wanted < std::size_t(kSumBlocks) ? wanted : std::size_t(kSumBlocks));
  sum_squares_partials_kernel<<<blocks, kSumThreads, 0, stream>>>(partials, x, groups4(n, x), n);
  CUDA_CHECK_LAUNCH(sum_squares_partials_kernel);
  sum_squares_final_kernel<<<1, kSumThreads, 0, stream>>>(result, partials, blocks);
  CUDA_CHECK_LAUNCH(sum_squares_final_kernel);
  double host = 0.0;
  CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace mixsim::cuda
