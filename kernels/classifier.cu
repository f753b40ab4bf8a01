// The fused softmax + cross-entropy: one block per row computes the row's max and the sum of
// exponentials in one pass over the row (an online softmax: each thread keeps a running max and a
// sum rescaled whenever the max grows; the threads' pairs are merged in a fixed order), the loss,
// and for training, in a second pass, overwrites the logits in place with
// dloss * (softmax - onehot) (fp32 logits, or bf16 ones, read as stored), or writes the gradient
// of fp32 logits as bf16 into a buffer of their own (the logits then stay); the probabilities
// are never stored.
//
// Where the row is long (from 8,192 logits, kCachedMinV) and fits in shared memory (GPT-2's
// 50,257 logits: 201 KB in fp32, 101 KB in bf16; an H100 gives a block 227 KB)
// classifier_cached_kernel copies it there with 16-byte loads and both passes read it from there:
// the logits are read from memory once. (The two passes of classifier_kernel, for other rows,
// read them twice: a GPT-2 batch's logits, 1.6 GB at B 8 in fp32, do not stay in L2 between the
// passes; short rows do.) In both kernels the in-place writes race with
// nothing: in classifier_kernel every element is read and written by the same thread, and the
// target's logit is read by all threads before the first barrier; classifier_cached_kernel writes
// only after its last read of the row in memory and a barrier.
//
// classifier_cached_kernel computes the max first (fmaxf alone, as each thread copies its part of
// the row into shared memory: since the fifteenth session, one pass over the cached row fewer
// and, ptxas sm_90, 47 registers a thread instead of 56 for bf16 rows), then from the cached row
// the sum of exp2(x log2 e - max log2 e) (one fused multiply-add and the hardware exp2 an element),
// then the gradients the same way (MIXSIM_CLASSIFIER_EXP2, the default). With
// MIXSIM_CLASSIFIER_EXP2=0 it runs the online pair instead (a compare, a branch and a
// full-precision expf an element) and expf again for the gradient, as classifier_kernel does: on an
// H200 (2026-11-27) that took 1.37 ms of a GPT-2 step (1.2 TB/s of the card's 4.0), exp2 0.85 ms.
// The two differ by the rounding of the exponentials (~1e-6 relative), within the tests' bounds
// against the CPU.

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

// Combines the threads' values over a block of kBlockWarps warps: each warp's by `warp_op`
// (which leaves every lane with the same value), then the warps' values by `op` in warp order.
// Every thread gets the same result. Ends with a barrier, so `scratch` can be reused at once.
template <int kBlockWarps, class T, class WarpOp, class Op>
__device__ T block_reduce(T v, T* scratch, WarpOp warp_op, Op op) {
  v = warp_op(v);
  if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kBlockWarps; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}

// The threads' pairs merged over a block (a butterfly of merges within each warp).
template <int kBlockWarps>
__device__ MaxSum block_merge(MaxSum v, MaxSum* scratch) {
  const auto warp_merge = [](MaxSum x) {
    for (int offset = 16; offset > 0; offset >>= 1)
      x = merge(x, {__shfl_xor_sync(kFullMask, x.m, offset),
                    __shfl_xor_sync(kFullMask, x.s, offset)});
    return x;
  };
  return block_reduce<kBlockWarps>(v, scratch, warp_merge,
                                   [](MaxSum a, MaxSum b) { return merge(a, b); });
}

// Adds logit x to a thread's running pair: a larger logit rescales the sum so far.
__device__ inline void add(MaxSum& part, float x) {
  if (x > part.m) {
    part.s = part.s * expf(part.m - x) + 1.f;
    part.m = x;
  } else if (x != -INFINITY) {  // (a NaN still makes the sum NaN)
    part.s += expf(x - part.m);
  }
}

// The gradient of logit j from its exp(x - max) e: dloss * softmax, less dloss at the target;
// k = dloss / sum.
__device__ inline float gradient(float e, int j, int target, float k, float dloss) {
  float g = __fmul_rn(e, k);
  if (j == target) g -= dloss;
  return g;
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
  for (int j = threadIdx.x; j < V; j += kThreads) add(part, load(row + j));
  const MaxSum total = block_merge<kWarps>(part, scratch);
  const float mx = total.m, sum = total.s;
  if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + mx - target_logit;
  if (!write) return;
  const float k = dloss / sum;
  for (int j = threadIdx.x; j < V; j += kThreads)
    store(grad + j, gradient(expf(load(row + j) - mx), j, target, k, dloss));
  for (int j = V + threadIdx.x; j < Vp; j += kThreads) store(grad + j, 0.f);
}

// The cached kernel pays off where the two reads of classifier_kernel would both come from memory:
// its 4 blocks an SM (528 rows at once on an H100) keep rows of up to ~10k fp32 logits in the
// 50 MB L2 between the passes, and a short row leaves most of a 1024-thread block idle (a
// byte-level model's 257 logits: 65 of 1024 threads), one block an SM. So rows from 8,192 logits.
constexpr int kCachedMinV = 8192;
constexpr int kCopyUnroll = 4;  // 16-byte loads in flight per thread while the row is copied
// A cached row's block: 1024 threads, of which two fit an SM's 64K registers only at 32 or fewer a
// thread (ptxas, sm_90: 30 to 54; the default's bf16 rows through exp2 47), so one row an SM at a
// time for GPT-2, and the SM's memory traffic waits while the block works from shared memory
// between its copy and its stores; or, with MIXSIM_CLASSIFIER_TWO_ROWS=1, 512 threads, two blocks
// an SM (at most 64 registers a thread) where two rows fit the SM's shared memory (bf16 GPT-2
// rows: 101 KB each), so that one row's copy or stores overlap the other's work.
constexpr int kCachedThreads = 1024;
constexpr int kTwoRowsThreads = 512;

// One row per block, cached in dynamic shared memory as kVec-element vectors (16 bytes): the
// first ceil(V / kVec) vectors of the row (the last one may hold padding, never used). The
// launcher checks that the row and dlogits' rows are so aligned (Vp a multiple of kVec).
constexpr float kLog2e = 1.4426950408889634f;

// exp(x - max) as exp2(x log2 e - max log2 e): one fma and the hardware exp2 (0 for x = -inf)
__device__ inline float exp_shifted(float x, float max_log2e) {
  return exp2f(fmaf(x, kLog2e, -max_log2e));
}

template <class In, class Grad, bool kExp2, int kRowThreads>
__global__ void __launch_bounds__(kRowThreads, kCachedThreads / kRowThreads)
    classifier_cached_kernel(const In* logits, Grad* dlogits, float* losses, const int* targets,
                             float dloss, int V, int Vp) {
  constexpr int kCachedWarps = kRowThreads / kWarpSize;
  constexpr int kVec = 16 / sizeof(In);
  using InPack = Pack<In, kVec>;
  using GradPack = Pack<Grad, kVec>;
  extern __shared__ __align__(16) unsigned char cache_bytes[];  // (one type for every instance)
  auto* cache = reinterpret_cast<InPack*>(cache_bytes);
  __shared__ MaxSum scratch[kCachedWarps];
  const int target = targets[blockIdx.x];
  Grad* grad = dlogits ? dlogits + std::size_t(blockIdx.x) * Vp : nullptr;
  const bool write = grad != nullptr;
  if (target < 0) {  // a skipped position: no loss, no gradient (the whole block)
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.f;
    if (write)
      for (int j = threadIdx.x; j < Vp; j += kRowThreads) store(grad + j, 0.f);
    return;
  }
  const auto* row = reinterpret_cast<const InPack*>(logits + std::size_t(blockIdx.x) * Vp);
  const int vectors = CEIL_DIV(V, kVec);
  // the copy: kCopyUnroll loads issued before their stores, so that many are in flight. With
  // exp2, each thread's max of the vectors it copies, from the registers they pass through (the
  // vectors it reads from the cache below, in the same order)
  float part_max = -INFINITY;
  for (int q0 = threadIdx.x; q0 < vectors; q0 += kCopyUnroll * kRowThreads) {
    InPack v[kCopyUnroll];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u)
      if (const int q = q0 + u * kRowThreads; q < vectors) v[u] = row[q];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u)
      if (const int q = q0 + u * kRowThreads; q < vectors) {
        cache[q] = v[u];
        if constexpr (kExp2)
#pragma unroll
          for (int i = 0; i < kVec; ++i)
            if (q * kVec + i < V) part_max = fmaxf(part_max, widen(v[u].e[i]));
      }
  }
  __syncthreads();
  // The row's max and the sum of exp(x - max): with exp2 two passes (the max, from the copy, then
  // the sum of exp_shifted), else the online pair (each thread's vectors in order, their elements
  // in order, 16-byte shared-memory reads).
  float mx, sum;
  if constexpr (kExp2) {
    __shared__ float partials[kCachedWarps];
    mx = block_reduce<kCachedWarps>(part_max, partials, [](float x) { return warp_max(x); },
                                    [](float a, float b) { return fmaxf(a, b); });
    float part_sum = 0.f;
    for (int q = threadIdx.x; q < vectors; q += kRowThreads) {
      const InPack v = cache[q];
#pragma unroll
      for (int i = 0; i < kVec; ++i)
        if (q * kVec + i < V) part_sum += exp_shifted(widen(v.e[i]), mx * kLog2e);
    }
    sum = block_reduce<kCachedWarps>(part_sum, partials, [](float x) { return warp_sum(x); },
                                     [](float a, float b) { return a + b; });
  } else {
    MaxSum part{-INFINITY, 0.f};
    for (int q = threadIdx.x; q < vectors; q += kRowThreads) {
      const InPack v = cache[q];
#pragma unroll
      for (int i = 0; i < kVec; ++i)
        if (q * kVec + i < V) add(part, widen(v.e[i]));
    }
    const MaxSum total = block_merge<kCachedWarps>(part, scratch);
    mx = total.m;
    sum = total.s;
  }
  const In* cached = reinterpret_cast<const In*>(cache);
  if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + mx - load(cached + target);
  if (!write) return;
  const float k = dloss / sum;
  // exp(x - max) in the form the sum took
  const auto shifted_exp = [&](float x) {
    if constexpr (kExp2)
      return exp_shifted(x, mx * kLog2e);
    else
      return expf(x - mx);
  };
  auto* out = reinterpret_cast<GradPack*>(grad);
  for (int q = threadIdx.x; q < Vp / kVec; q += kRowThreads) {
    GradPack g;
    if (q < vectors) {
      const InPack v = cache[q];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const int j = q * kVec + i;
        g.e[i] = narrow<Grad>(j < V ? gradient(shifted_exp(widen(v.e[i])), j, target, k, dloss)
                                    : 0.f);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) g.e[i] = narrow<Grad>(0.f);
    }
    out[q] = g;
  }
}

// Shared memory an SM has for blocks, and what the system reserves of it for each block.
std::pair<std::size_t, std::size_t> shared_per_sm(int device) {
  int sm = 0, reserved = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
  return {std::size_t(sm), std::size_t(reserved)};
}

// Runs the cached kernel where the row fits in a block's shared memory and the rows are aligned
// for its vectors; returns false (nothing launched) otherwise. With form.two_rows, the kernel of
// kTwoRowsThreads where two such blocks fit an SM's shared memory, with the SM's split between L1
// and shared memory asked to make room for both.
template <class In, class Grad>
bool launch_cached(const In* logits, Grad* dlogits, float* losses, const int* targets, float dloss,
                   int N, int V, int Vp, ClassifierForm form, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(In);
  if (V < kCachedMinV || Vp % kVec != 0 || !aligned_to<kVec>(logits) ||
      (dlogits && !aligned_to<kVec>(dlogits)))
    return false;
  const std::size_t shared = std::size_t(CEIL_DIV(V, kVec)) * 16;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  // (the static arrays: the online pairs, the exp2 form's floats; at most a warp's of each)
  const std::size_t block =
      shared + (kCachedThreads / kWarpSize) * (sizeof(MaxSum) + sizeof(float));
  if (block > max_shared_per_block(device)) return false;
  const auto run = [&](auto kernel, int threads) {
    allow_dynamic_shared(kernel, shared);
    kernel<<<N, threads, shared, stream>>>(logits, dlogits, losses, targets, dloss, V, Vp);
    CUDA_CHECK_LAUNCH(classifier_cached_kernel);
  };
  if (form.two_rows) {
    const auto [per_sm, reserved] = shared_per_sm(device);
    if (2 * (block + reserved) <= per_sm) {
      const auto kernel = form.exp2 ? classifier_cached_kernel<In, Grad, true, kTwoRowsThreads>
                                    : classifier_cached_kernel<In, Grad, false, kTwoRowsThreads>;
      prefer_shared_memory(kernel);
      run(kernel, kTwoRowsThreads);
      return true;
    }
  }
  run(form.exp2 ? classifier_cached_kernel<In, Grad, true, kCachedThreads>
                : classifier_cached_kernel<In, Grad, false, kCachedThreads>,
      kCachedThreads);
  return true;
}

// The cached kernel where it can run, else classifier_kernel.
template <class In, class Grad>
void launch(const In* logits, Grad* dlogits, float* losses, const int* targets, float dloss, int N,
            int V, int Vp, ClassifierForm form, cudaStream_t stream) {
  if (launch_cached(logits, dlogits, losses, targets, dloss, N, V, Vp, form, stream)) return;
  classifier_kernel<<<N, kThreads, 0, stream>>>(logits, dlogits, losses, targets, dloss, V, Vp);
  CUDA_CHECK_LAUNCH(classifier_kernel);
}

}  // namespace

void classifier(TensorOut logits_t, float* losses, const int* targets, float dloss,
                TensorOut dlogits, int N, int V, int Vp, ClassifierForm form, cudaStream_t stream) {
  CUDA_REQUIRE(N > 0 && V > 0 && V <= Vp, "classifier", dims({{"N", N}, {"V", V}, {"Vp", Vp}}));
  if (logits_t.type == DType::bf16) {  // read as stored; the gradient in place, or none
    CUDA_REQUIRE(!dlogits.data || (dlogits.type == DType::bf16 && dlogits.data == logits_t.data),
                 "classifier (the dlogits of bf16 logits are written in place)",
                 std::string("dlogits apart from the logits"));
    auto* logits = static_cast<__nv_bfloat16*>(logits_t.data);
    launch(logits, dlogits.data ? logits : static_cast<__nv_bfloat16*>(nullptr), losses, targets,
           dloss, N, V, Vp, form, stream);
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
  typed(dlogits,
        [&](auto* grad) { launch(logits, grad, losses, targets, dloss, N, V, Vp, form, stream); });
}

}  // namespace mixsim::cuda
