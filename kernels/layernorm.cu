// LayerNorm over C channels: one warp per row, two passes (mean, then variance of x - mean) as
// the CPU backend does, over the row held in registers for C up to 2048; optionally with the
// residual add that forms its input fused in (the addend, a branch's output, fp32 or bf16 widened:
// Backend::branch_output_storage; so may the backward's dout be). The weight
// and bias gradients are sums over rows, formed per block of rows and then added in block order
// (deterministic, no atomics): for C up to 1024 in the same pass as the input gradient (one read
// of dout and inp; each lane keeps its channels' sums in registers), else by a second kernel that
// reads dout and inp again in chunks of kRowChunk rows.
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // one warp per row
constexpr int kRowLanes = 8;      // param-gradient partials: block = (32 channels, kRowLanes)
// The fused backward: a block of kFusedWarps warps takes kFusedRows rows, kFusedRowsPerWarp a
// warp, and each lane up to kFusedMaxPerLane channels (c = lane + 32 k).
constexpr int kFusedWarps = 8;
constexpr int kFusedRowsPerWarp = 4;
constexpr int kFusedRows = kFusedWarps * kFusedRowsPerWarp;
constexpr int kFusedMaxPerLane = 32;    // C up to 1024
constexpr int kForwardMaxPerLane = 64;  // the forward's row in registers: C up to 2048

// With `add`, the row is first formed as inp + add (the residual add) and written to `sum`, which
// may alias inp: one pass over both inputs instead of a separate add whose result is read back.
// Each lane reads back only the elements it wrote, so the row needs no barrier.
template <class Out, class Add>
__global__ void layernorm_forward_kernel(Out* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int N, int C,
                                         const Add* add, float* sum_out) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;  // the whole warp
  const std::size_t off = std::size_t(row) * C;
  const float* x = inp + off;
  float sum = 0.f;
  if (add) {
    float* r = sum_out + off;
    for (int c = lane; c < C; c += kWarpSize) {
      const float v = x[c] + load(add + off + c);
      r[c] = v;
      sum += v;
    }
    x = r;
  } else {
    for (int c = lane; c < C; c += kWarpSize) sum += x[c];
  }
  const float m = warp_sum(sum) / float(C);
  float var = 0.f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float d = x[c] - m;
    var += d * d;
  }
  const float s = 1.0f / sqrtf(warp_sum(var) / float(C) + kLayerNormEps);
  Out* o = out + off;
  for (int c = lane; c < C; c += kWarpSize) store(o + c, (x[c] - m) * s * weight[c] + bias[c]);
  if (lane == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = s;
  }
}

// Group i of kWidth consecutive elements of p (aligned to kWidth of them), as one access: a
// scalar for kWidth 1, a 16-byte vector of floats for 4.
template <int kWidth, class T>
__device__ inline Pack<T, kWidth>& group_at(T* p, std::size_t i) {
  return reinterpret_cast<Pack<T, kWidth>*>(p)[i];
}
template <int kWidth, class T>
__device__ inline const Pack<T, kWidth>& group_at(const T* p, std::size_t i) {
  return reinterpret_cast<const Pack<T, kWidth>*>(p)[i];
}

// The same for C up to 32 * kForwardMaxPerLane (GPT-2's 768, the 1.1B model's 2048): each lane
// keeps its channels of the row in registers, so the row (and the addend) is read once and the
// sum written once, where the kernel above reads the row three times. Lane l holds the kGroups
// groups of kWidth channels from kWidth (l + 32 k), each read and written as one access.
// kWidth 1 (the default): channels l + 32 k, the same operations in the same order as the kernel
// above. kWidth 4 (MIXSIM_LAYERNORM_VEC4=1, an opt-in written without a GPU at hand): 16-byte
// accesses to the row, the addend, the weight and the bias, a float4 store of the sum and an
// 8-byte one of a bf16 output, where kWidth 1 issues four 4-byte loads and 2-byte bf16 stores (run
// 10's Nsight Compute step had it at 53% of memory throughput and 20% issue use); each element's
// arithmetic is the same, but the per-lane sums take other channels, so mean and rstd differ by
// rounding (and so do the outputs), within the CPU tests' bounds. kWidth 4 needs C % 4 == 0 and
// every row array aligned to four floats (the launcher checks).
template <int kGroups, int kWidth, class Out, class Add>
__global__ void layernorm_forward_rows_kernel(Out* out, float* mean, float* rstd, const float* inp,
                                              const float* weight, const float* bias, int N, int C,
                                              const Add* add, float* sum_out) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;  // the whole warp
  const std::size_t group0 = std::size_t(row) * (C / kWidth);  // the row's first group
  Pack<float, kWidth> xs[kGroups];
  float sum = 0.f;
  // every load first: sum_out may alias inp or add, so a store between them would keep the
  // compiler from issuing the next loads before it (each lane writes only what it has read)
#pragma unroll
  for (int k = 0; k < kGroups; ++k) {
    const int g = lane + k * kWarpSize;  // channels kWidth g .. kWidth g + kWidth - 1
    xs[k] = Pack<float, kWidth>{};
    if (kWidth * g < C) {
      xs[k] = group_at<kWidth>(inp, group0 + g);
      if (add) {
        const Pack<Add, kWidth> a = group_at<kWidth>(add, group0 + g);
#pragma unroll
        for (int e = 0; e < kWidth; ++e) xs[k].e[e] = xs[k].e[e] + widen(a.e[e]);
      }
#pragma unroll
      for (int e = 0; e < kWidth; ++e) sum += xs[k].e[e];
    }
  }
  if (add)
#pragma unroll
    for (int k = 0; k < kGroups; ++k)
      if (const int g = lane + k * kWarpSize; kWidth * g < C)
        group_at<kWidth>(sum_out, group0 + g) = xs[k];
  const float m = warp_sum(sum) / float(C);
  float var = 0.f;
#pragma unroll
  for (int k = 0; k < kGroups; ++k)
    if (kWidth * (lane + k * kWarpSize) < C)
#pragma unroll
      for (int e = 0; e < kWidth; ++e) {
        const float d = xs[k].e[e] - m;
        var += d * d;
      }
  const float s = 1.0f / sqrtf(warp_sum(var) / float(C) + kLayerNormEps);
#pragma unroll
  for (int k = 0; k < kGroups; ++k) {
    const int g = lane + k * kWarpSize;
    if (kWidth * g >= C) continue;
    const Pack<float, kWidth> w = group_at<kWidth>(weight, g), b = group_at<kWidth>(bias, g);
    Pack<Out, kWidth> y;
#pragma unroll
    for (int e = 0; e < kWidth; ++e) y.e[e] = narrow<Out>((xs[k].e[e] - m) * s * w.e[e] + b.e[e]);
    group_at<kWidth>(out, group0 + g) = y;
  }
  if (lane == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = s;
  }
}

// dinp += s * (w * dout - mean(w * dout) - norm * mean(w * dout * norm)), norm = (x - m) * s.
template <class D>
__global__ void layernorm_backward_dinp_kernel(float* dinp, const D* dout, const float* inp,
                                               const float* weight, const float* mean,
                                               const float* rstd, int N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;  // the whole warp
  const std::size_t off = std::size_t(row) * C;
  const float* x = inp + off;
  const D* d = dout + off;
  float* dx = dinp + off;
  const float m = mean[row], s = rstd[row];
  float sum_dnorm = 0.f, sum_dnorm_norm = 0.f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float dnorm = weight[c] * load(d + c);
    sum_dnorm += dnorm;
    sum_dnorm_norm += dnorm * (x[c] - m) * s;
  }
  const float mean_dnorm = warp_sum(sum_dnorm) / float(C);
  const float mean_dnorm_norm = warp_sum(sum_dnorm_norm) / float(C);
  for (int c = lane; c < C; c += kWarpSize) {
    const float norm = (x[c] - m) * s;
    dx[c] += s * (weight[c] * load(d + c) - mean_dnorm - norm * mean_dnorm_norm);
  }
}

// Partial sums over one chunk of kRowChunk rows for 32 channels: dweight (dout * norm), dbias.
template <class D>
__global__ void layernorm_param_partials_kernel(float* partial_w, float* partial_b, const D* dout,
                                                const float* inp, const float* mean,
                                                const float* rstd, int N, int C) {
  __shared__ float sums_w[kRowLanes][kWarpSize];
  __shared__ float sums_b[kRowLanes][kWarpSize];
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  const int r0 = blockIdx.y * kRowChunk, r1 = min(N, r0 + kRowChunk);
  float w = 0.f, b = 0.f;
  if (c < C) {
    for (int r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const std::size_t i = std::size_t(r) * C + c;
      const float d = load(dout + i);
      w += d * (inp[i] - mean[r]) * rstd[r];
      b += d;
    }
  }
  sums_w[threadIdx.y][threadIdx.x] = w;
  sums_b[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float tw = 0.f, tb = 0.f;
    for (int k = 0; k < kRowLanes; ++k) {
      tw += sums_w[k][threadIdx.x];
      tb += sums_b[k][threadIdx.x];
    }
    partial_w[std::size_t(blockIdx.y) * C + c] = tw;
    partial_b[std::size_t(blockIdx.y) * C + c] = tb;
  }
}

// The block's partial sums over the warps' rows of `part` (kFusedWarps x C floats of shared
// memory, each warp's row written and visible), added in warp order, into row blockIdx.x of dst.
__device__ void store_block_row(float* dst, const float* part, int C) {
  dst += std::size_t(blockIdx.x) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float total = 0.f;
    for (int w = 0; w < kFusedWarps; ++w) total += part[w * C + c];
    dst[c] = total;
  }
}

// The end of a fused backward block: the block's partial sums of dweight, then of dbias, each
// added over the warps in warp order through shared memory `part` (kFusedWarps x C floats), into
// row blockIdx.x of partial_w and partial_b. fill(round, part) writes the warp's own row of
// `part` with its dweight (round 0) or dbias (round 1) partials.
template <class Fill>
__device__ void store_block_partials(float* part, float* partial_w, float* partial_b, int C,
                                     Fill&& fill) {
  for (int round = 0; round < 2; ++round) {
    fill(round, part + threadIdx.x / kWarpSize * C);
    __syncthreads();
    store_block_row(round == 0 ? partial_w : partial_b, part, C);
    __syncthreads();  // `part` is rewritten by the next round
  }
}

// dinp += the input gradient of kFusedRows rows (the arithmetic of layernorm_backward_dinp_kernel),
// and the block's partial sums of dweight (dout * norm) and dbias (dout) over them, from one read
// of each row held in registers; the warps' partials are then added in warp order through shared
// memory (store_block_partials). Lane l holds the kGroups groups of kWidth channels from
// kWidth (l + 32 k), as the forward rows kernel does. kWidth 4 (MIXSIM_LAYERNORM_VEC4=1, written
// without a GPU) moves inp, dout, weight and dinp as float4: each channel's parameter partials
// are summed over the same rows in the same order as with kWidth 1, so dweight and dbias are bit
// for bit the same; dinp's row sums (mean_dnorm, mean_dnorm_norm) take other channels per lane,
// so dinp differs by rounding. kWidth 4 needs C % 4 == 0 and the row arrays aligned to four
// floats (the launcher checks).
// kFeed (MIXSIM_LAYERNORM_FEEDS_PRODUCT=1, written without a GPU): the updated dinp is also the
// next projection's dout, so the block also sums its columns (partial_p, the projection's bias
// gradient: each warp over its rows in order, in its own row of `part`, then the warps in order)
// and, with copy, writes it rounded to bf16 (the projection's operand; the rounding
// column_sums_accumulate makes of an fp32 dout). Those sums live in shared memory, not in
// registers as dweight's and dbias's do: held there too they took GPT-2's C = 768 from 126 to
// 192 registers a thread (ptxas, sm_90), one block an SM instead of two; in shared memory ptxas
// still took 172 until asked for two blocks an SM (layernorm_backward_feeding_kernel): 128, no
// spills. The body is one function for both kernels; the plain one keeps the launch bounds (and
// so the registers: 128 at C 768) it has run with.
template <int kGroups, int kWidth, bool kFeed, class D>
__device__ __forceinline__ void layernorm_backward_fused(float* part, float* dinp, float* partial_w,
                                                         float* partial_b, float* partial_p,
                                                         __nv_bfloat16* copy, const D* dout,
                                                         const float* inp, const float* weight,
                                                         const float* mean, const float* rstd,
                                                         int N, int C) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  Pack<float, kWidth> pw[kGroups], pb[kGroups];
#pragma unroll
  for (int k = 0; k < kGroups; ++k) pw[k] = pb[k] = Pack<float, kWidth>{};
  float* mine = part + warp * C;  // kFeed: the warp's column sums of the updated dinp
  if constexpr (kFeed) {
    for (int c = lane; c < C; c += kWarpSize) mine[c] = 0.f;
    __syncwarp();
  }
  const int r0 = blockIdx.x * kFusedRows + warp * kFusedRowsPerWarp;
  for (int rr = 0; rr < kFusedRowsPerWarp; ++rr) {
    const int row = r0 + rr;
    if (row >= N) break;  // the whole warp
    const std::size_t group0 = std::size_t(row) * (C / kWidth);
    const float m = mean[row], s = rstd[row];
    Pack<float, kWidth> xs[kGroups], ds[kGroups];
    float sum_dnorm = 0.f, sum_dnorm_norm = 0.f;
#pragma unroll
    for (int k = 0; k < kGroups; ++k) {
      const int g = lane + k * kWarpSize;
      xs[k] = ds[k] = Pack<float, kWidth>{};
      if (kWidth * g < C) {
        xs[k] = group_at<kWidth>(inp, group0 + g);
        const Pack<D, kWidth> dk = group_at<kWidth>(dout, group0 + g);
#pragma unroll
        for (int e = 0; e < kWidth; ++e) ds[k].e[e] = widen(dk.e[e]);
        const Pack<float, kWidth> w = group_at<kWidth>(weight, g);
#pragma unroll
        for (int e = 0; e < kWidth; ++e) {
          const float dnorm = w.e[e] * ds[k].e[e];
          sum_dnorm += dnorm;
          sum_dnorm_norm += dnorm * (xs[k].e[e] - m) * s;
        }
      }
    }
    const float mean_dnorm = warp_sum(sum_dnorm) / float(C);
    const float mean_dnorm_norm = warp_sum(sum_dnorm_norm) / float(C);
#pragma unroll
    for (int k = 0; k < kGroups; ++k) {
      const int g = lane + k * kWarpSize;
      if (kWidth * g >= C) continue;
      const Pack<float, kWidth> w = group_at<kWidth>(weight, g);
      Pack<float, kWidth>& dx = group_at<kWidth>(dinp, group0 + g);
      Pack<float, kWidth> d = dx;
#pragma unroll
      for (int e = 0; e < kWidth; ++e) {
        const float norm = (xs[k].e[e] - m) * s;
        d.e[e] += s * (w.e[e] * ds[k].e[e] - mean_dnorm - norm * mean_dnorm_norm);
        pw[k].e[e] += ds[k].e[e] * (xs[k].e[e] - m) * s;  // the CPU's order of the product
        pb[k].e[e] += ds[k].e[e];
      }
      dx = d;
      if constexpr (kFeed) {
        Pack<float, kWidth>& sum = group_at<kWidth>(mine, g);
        Pack<__nv_bfloat16, kWidth> rounded;
#pragma unroll
        for (int e = 0; e < kWidth; ++e) {
          sum.e[e] += d.e[e];
          rounded.e[e] = __float2bfloat16_rn(d.e[e]);
        }
        if (copy) reinterpret_cast<Pack<__nv_bfloat16, kWidth>*>(copy)[group0 + g] = rounded;
      }
    }
  }
  if constexpr (kFeed) {  // the dinp sums first: `part` holds them until the rounds below
    __syncthreads();
    store_block_row(partial_p, part, C);
    __syncthreads();
  }
  store_block_partials(part, partial_w, partial_b, C, [&](int round, float* row) {
#pragma unroll
    for (int k = 0; k < kGroups; ++k) {
      const int g = lane + k * kWarpSize;
      if (kWidth * g < C) group_at<kWidth>(row, g) = round == 0 ? pw[k] : pb[k];
    }
  });
}

template <int kGroups, int kWidth, class D>
__global__ void __launch_bounds__(kFusedWarps* kWarpSize)
    layernorm_backward_fused_kernel(float* dinp, float* partial_w, float* partial_b, const D* dout,
                                    const float* inp, const float* weight, const float* mean,
                                    const float* rstd, int N, int C) {
  extern __shared__ float part[];  // (kFusedWarps, C)
  layernorm_backward_fused<kGroups, kWidth, false>(part, dinp, partial_w, partial_b, nullptr,
                                                   nullptr, dout, inp, weight, mean, rstd, N, C);
}

// Two blocks an SM where a lane holds up to 24 channels (GPT-2's 768): 128 registers.
template <int kGroups, int kWidth, class D>
__global__ void __launch_bounds__(kFusedWarps* kWarpSize, kGroups* kWidth <= 24 ? 2 : 1)
    layernorm_backward_feeding_kernel(float* dinp, float* partial_w, float* partial_b,
                                      float* partial_p, __nv_bfloat16* copy, const D* dout,
                                      const float* inp, const float* weight, const float* mean,
                                      const float* rstd, int N, int C) {
  extern __shared__ float part[];  // (kFusedWarps, C)
  layernorm_backward_fused<kGroups, kWidth, true>(part, dinp, partial_w, partial_b, partial_p, copy,
                                                  dout, inp, weight, mean, rstd, N, C);
}

// Calls fn(std::integral_constant<int, K>) for the first K of kInstances (ascending) that is at
// least `need`, or for the last one.
template <int... kInstances, class Fn>
void with_smallest_instance(int need, Fn&& fn) {
  constexpr int kAll[] = {kInstances...};
  const bool called =
      ((kInstances >= need && (fn(std::integral_constant<int, kInstances>{}), true)) || ...);
  if (!called) fn(std::integral_constant<int, kAll[sizeof...(kInstances) - 1]>{});
}

// Calls fn(std::integral_constant<int, P>) for the smallest P of the kernels' instances that
// covers C channels (P * 32 >= C; C <= 32 * kMax, kMax one of the instances).
template <int kMax, class Fn>
void with_channels_per_lane(int C, Fn&& fn) {
  static_assert(kMax == 32 || kMax == 64);
  const int need = CEIL_DIV(C, kWarpSize);
  if constexpr (kMax == 32)
    with_smallest_instance<2, 4, 8, 12, 16, 24, 32>(need, fn);
  else
    with_smallest_instance<2, 4, 8, 12, 16, 24, 32, 48, 64>(need, fn);
}

}  // namespace

namespace {

// Calls fn(std::integral_constant<int, G>) for the smallest G of the vec4 kernel's instances that
// covers C channels (128 G >= C, C <= 2048): GPT-2's 768 takes 6, the 1.1B model's 2048 16.
template <class Fn>
void with_groups_per_lane(int C, Fn&& fn) {
  with_smallest_instance<1, 2, 4, 6, 8, 12, 16>(CEIL_DIV(C, 4 * kWarpSize), fn);
}

// add (nullable): the residual add's addend, fp32 or bf16.
void launch_layernorm_forward(TensorOut out, float* mean, float* rstd, const float* inp,
                              const float* weight, const float* bias, int N, int C, TensorIn add,
                              float* sum_out, bool vec4, cudaStream_t stream) {
  const dim3 grid(CEIL_DIV(N, kRowsPerBlock)), block(kRowsPerBlock * kWarpSize);
  // fn(out, add) with each as the pointer type its storage names
  const auto with_types = [&](auto&& fn) {
    typed(out, [&](auto* o) { typed(add, [&](auto* a) { fn(o, a); }); });
  };
  // the vec4 kernel where asked and every row starts at a multiple of four elements
  if (vec4 && C % 4 == 0 && C <= kWarpSize * kForwardMaxPerLane &&
      aligned_to<4>(inp, weight, bias) &&
      (!add.data || (stored_aligned_to<4>(add) && aligned_to<4>(sum_out))) &&
      stored_aligned_to<4>(out)) {
    with_groups_per_lane(C, [&](auto groups) {
      with_types([&](auto* o, auto* a) {
        layernorm_forward_rows_kernel<decltype(groups)::value, 4>
            <<<grid, block, 0, stream>>>(o, mean, rstd, inp, weight, bias, N, C, a, sum_out);
      });
    });
    CUDA_CHECK_LAUNCH(layernorm_forward_rows_kernel);
    return;
  }
  if (C <= kWarpSize * kForwardMaxPerLane) {  // the row in registers
    with_channels_per_lane<kForwardMaxPerLane>(C, [&](auto per_lane) {
      with_types([&](auto* o, auto* a) {
        layernorm_forward_rows_kernel<decltype(per_lane)::value, 1>
            <<<grid, block, 0, stream>>>(o, mean, rstd, inp, weight, bias, N, C, a, sum_out);
      });
    });
    CUDA_CHECK_LAUNCH(layernorm_forward_rows_kernel);
    return;
  }
  with_types([&](auto* o, auto* a) {
    layernorm_forward_kernel<<<grid, block, 0, stream>>>(o, mean, rstd, inp, weight, bias, N, C, a,
                                                         sum_out);
  });
  CUDA_CHECK_LAUNCH(layernorm_forward_kernel);
}

}  // namespace

void layernorm_forward(TensorOut out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, bool vec4,
                       cudaStream_t stream) {
  CUDA_REQUIRE(N > 0 && C > 0, "layernorm_forward", dims({{"N", N}, {"C", C}}));
  launch_layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, TensorIn(), nullptr, vec4,
                           stream);
}

void residual_layernorm_forward(float* residual, TensorOut out, float* mean, float* rstd,
                                const float* a, TensorIn b, const float* weight, const float* bias,
                                int N, int C, bool vec4, cudaStream_t stream) {
  CUDA_REQUIRE(N > 0 && C > 0, "residual_layernorm_forward", dims({{"N", N}, {"C", C}}));
  CUDA_REQUIRE(residual != nullptr && a != nullptr && b.data != nullptr,
               "residual_layernorm_forward", std::string("a null residual or input"));
  CUDA_REQUIRE(b.type == DType::fp32 || !bytes_overlap(residual, std::size_t(N) * C * sizeof(float),
                                                       b.data, std::size_t(N) * C * 2),
               "residual_layernorm_forward", std::string("the sum overlaps a bf16 addend"));
  // The kernel reads `a` as the row and `b` as the addend; `residual` may alias either.
  launch_layernorm_forward(out, mean, rstd, a, weight, bias, N, C, b, residual, vec4, stream);
}

std::size_t layernorm_backward_workspace(int N, int C, bool feed) {
  const bool fused = C <= kWarpSize * kFusedMaxPerLane;
  const int blocks = fused ? CEIL_DIV(N, kFusedRows) : CEIL_DIV(N, kRowChunk);
  const std::size_t partials = Workspace::aligned(std::size_t(blocks) * C * sizeof(float));
  if (!feed) return 2 * partials;
  return fused ? 3 * partials : 2 * partials + column_sums_workspace(N, C);
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, TensorIn dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C,
                        bool vec4, Workspace ws, cudaStream_t stream, float* product_dbias,
                        __nv_bfloat16* copy) {
  CUDA_REQUIRE(N > 0 && C > 0, "layernorm_backward", dims({{"N", N}, {"C", C}}));
  CUDA_REQUIRE(mean != nullptr && rstd != nullptr, "layernorm_backward",
               std::string("no mean/rstd saved by the forward pass"));
  CUDA_REQUIRE(!copy || product_dbias, "layernorm_backward",
               std::string("a bf16 copy of dinp without the product's bias gradient"));
  if (C <= kWarpSize * kFusedMaxPerLane) {  // one pass: dinp and the blocks' partial sums
    const int blocks = CEIL_DIV(N, kFusedRows);
    float* partial_w = ws.take<float>(std::size_t(blocks) * C);
    float* partial_b = ws.take<float>(std::size_t(blocks) * C);
    float* partial_p = product_dbias ? ws.take<float>(std::size_t(blocks) * C) : nullptr;
    const std::size_t shared = std::size_t(kFusedWarps) * C * sizeof(float);  // <= 32 KiB
    // the kernel, feeding a product or not (kFeed), for dout as stored
    const auto launch = [&](auto groups, auto width) {
      constexpr int G = decltype(groups)::value, W = decltype(width)::value;
      typed(dout, [&](auto* d) {
        if (product_dbias)
          layernorm_backward_feeding_kernel<G, W>
              <<<blocks, kFusedWarps * kWarpSize, shared, stream>>>(
                  dinp, partial_w, partial_b, partial_p, copy, d, inp, weight, mean, rstd, N, C);
        else
          layernorm_backward_fused_kernel<G, W>
              <<<blocks, kFusedWarps * kWarpSize, shared, stream>>>(dinp, partial_w, partial_b, d,
                                                                    inp, weight, mean, rstd, N, C);
      });
    };
    // the vec4 kernel where asked and every row starts at a multiple of four elements (shared
    // memory's rows of C floats then do too; a bf16 copy's rows at multiples of four elements)
    if (vec4 && C % 4 == 0 && stored_aligned_to<4>(dout) && aligned_to<4>(dinp, inp, weight) &&
        (!copy || aligned_to<4>(copy))) {
      with_groups_per_lane(C, [&](auto groups) {
        constexpr int G = decltype(groups)::value;
        if constexpr (4 * kWarpSize * G <= kWarpSize * kFusedMaxPerLane)  // C up to 1024
          launch(groups, std::integral_constant<int, 4>{});
      });
      CUDA_CHECK_LAUNCH(layernorm_backward_fused_kernel);
    } else {
      with_channels_per_lane<kFusedMaxPerLane>(
          C, [&](auto per_lane) { launch(per_lane, std::integral_constant<int, 1>{}); });
      CUDA_CHECK_LAUNCH(layernorm_backward_fused_kernel);
    }
    if (product_dbias)
      accumulate_partials(dweight, partial_w, dbias, partial_b, product_dbias, partial_p, blocks, C,
                          stream);
    else
      accumulate_partials(dweight, partial_w, dbias, partial_b, blocks, C, stream);
    return;
  }
  const int chunks = CEIL_DIV(N, kRowChunk);
  CUDA_REQUIRE(chunks <= 65535, "layernorm_backward (grid.y)", dims({{"N", N}}));
  typed(dout, [&](auto* d) {
    layernorm_backward_dinp_kernel<<<CEIL_DIV(N, kRowsPerBlock), kRowsPerBlock * kWarpSize, 0,
                                     stream>>>(dinp, d, inp, weight, mean, rstd, N, C);
  });
  CUDA_CHECK_LAUNCH(layernorm_backward_dinp_kernel);
  float* partial_w = ws.take<float>(std::size_t(chunks) * C);
  float* partial_b = ws.take<float>(std::size_t(chunks) * C);
  const dim3 grid(CEIL_DIV(C, kWarpSize), chunks), block(kWarpSize, kRowLanes);
  typed(dout, [&](auto* d) {
    layernorm_param_partials_kernel<<<grid, block, 0, stream>>>(partial_w, partial_b, d, inp, mean,
                                                                rstd, N, C);
  });
  CUDA_CHECK_LAUNCH(layernorm_param_partials_kernel);
  accumulate_partials(dweight, partial_w, dbias, partial_b, chunks, C, stream);
  // above C 1024, the projection's part as its own backward would make it: the column sums of
  // the fp32 dinp, and the rounded copy in the same pass
  if (product_dbias) column_sums_accumulate(product_dbias, dinp, N, C, ws, stream, copy);
}

}  // namespace mixsim::cuda
