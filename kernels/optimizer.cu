// AdamW and the squared gradient norm.
// AdamW spells every operation with a round-to-nearest intrinsic: no multiply-add is contracted,
// so each element sees exactly the float operations of the CPU backend, in the same order, and
// the updates are bit-identical to it.
// sum_squares is deterministic: a fixed grid (from n only) of blocks adds fixed strided elements
// in double and reduces them in a fixed tree; one block then adds the block sums the same way.
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

__global__ void adamw_kernel(float* params, float* m, float* v, const float* grads, std::size_t n,
                             AdamWConstants a) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = __fmul_rn(grads[i], a.grad_scale);
    const float mi = __fadd_rn(__fmul_rn(a.beta1, m[i]), __fmul_rn(a.one_minus_beta1, g));
    const float vi =
        __fadd_rn(__fmul_rn(a.beta2, v[i]), __fmul_rn(__fmul_rn(a.one_minus_beta2, g), g));
    m[i] = mi;
    v[i] = vi;
    const float update =
        __fdiv_rn(__fmul_rn(mi, a.inv_bc1), __fadd_rn(__fsqrt_rn(__fmul_rn(vi, a.inv_bc2)), a.eps));
    const float p = params[i];
    params[i] = __fsub_rn(p, __fmul_rn(a.lr, __fadd_rn(update, __fmul_rn(a.weight_decay, p))));
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
    sum_squares_partials_kernel(double* partials, const float* x, std::size_t n) {
  __shared__ double s[kSumThreads];
  const std::size_t stride = std::size_t(gridDim.x) * kSumThreads;
  double acc = 0.0;
  for (std::size_t i = std::size_t(blockIdx.x) * kSumThreads + threadIdx.x; i < n; i += stride) {
    const double xi = x[i];
    acc += xi * xi;
  }
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
           const AdamWArgs& args, cudaStream_t stream) {
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
  adamw_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(params, m, v, grads, n, a);
  CUDA_CHECK_LAUNCH(adamw_kernel);
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
  sum_squares_partials_kernel<<<blocks, kSumThreads, 0, stream>>>(partials, x, n);
  CUDA_CHECK_LAUNCH(sum_squares_partials_kernel);
  sum_squares_final_kernel<<<1, kSumThreads, 0, stream>>>(result, partials, blocks);
  CUDA_CHECK_LAUNCH(sum_squares_final_kernel);
  double host = 0.0;
  CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace mixsim::cuda
