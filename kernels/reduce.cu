// Column sums of a row-major (N, C) matrix for parameter gradients (biases), deterministic: each
// block sums a fixed chunk of rows for its columns in a fixed order, then kChunkLanes threads per
// column each add every kChunkLanes-th chunk sum in chunk order, and one of them adds their totals
// in order. No atomics, so the result is the same on every run.
// Optionally the same pass writes x rounded to bf16 (the bf16 operand of a gradient's products),
// which saves the rounding pass its own read of x. Where C is a multiple of 4 and x (and the
// rounded copy) aligned to four elements, each thread takes four adjacent columns with one load
// (16 bytes of fp32, 8 of bf16): the same sums, in the same order, from a quarter of the loads.
#include <type_traits>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kRowLanes = 8;      // threads per column in a chunk; block = (32, kRowLanes)
constexpr int kColumnChunk = 64;  // rows a block sums (N / 64 blocks down: enough to fill a GPU)

// Partial sums of chunk blockIdx.y's rows for 32 * kCols columns from blockIdx.x * 32 * kCols,
// kCols (1 or 4) adjacent ones a thread.
template <int kCols, class In>
__global__ void column_partials_kernel(float* partials, __nv_bfloat16* rounded, const In* x, int N,
                                       int C) {
  __shared__ float sums[kRowLanes][kWarpSize * kCols];
  const int c = (blockIdx.x * kWarpSize + threadIdx.x) * kCols;
  const int r0 = blockIdx.y * kColumnChunk, r1 = min(N, r0 + kColumnChunk);
  float s[kCols] = {};
  if (c < C)
    for (int r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const std::size_t i = std::size_t(r) * C + c;
      const Pack<In, kCols> v = *reinterpret_cast<const Pack<In, kCols>*>(x + i);
      Pack<__nv_bfloat16, kCols> b;
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
        const float f = widen(v.e[k]);
        s[k] += f;
        b.e[k] = __float2bfloat16_rn(f);
      }
      if (rounded) *reinterpret_cast<Pack<__nv_bfloat16, kCols>*>(rounded + i) = b;
    }
#pragma unroll
  for (int k = 0; k < kCols; ++k) sums[threadIdx.y][threadIdx.x * kCols + k] = s[k];
  __syncthreads();
  // one thread per column adds the kRowLanes partials in order
  const int t = threadIdx.y * kWarpSize + threadIdx.x;
  for (int j = t; j < kWarpSize * kCols; j += kWarpSize * kRowLanes) {
    const int col = blockIdx.x * kWarpSize * kCols + j;
    if (col >= C) continue;
    float total = 0.f;
    for (int k = 0; k < kRowLanes; ++k) total += sums[k][j];
    partials[std::size_t(blockIdx.y) * C + col] = total;
  }
}

// Threads per column in accumulate_partials: one thread per column walking all 128 chunks of a
// GPT-2 step (8192 rows) took 7 us a call on an H100, 98 calls a step (2026-11-27, ncu), waiting
// on one load after another; a block = (32 columns, 32 lanes) has 4 loads a thread there.
constexpr int kChunkLanes = 32;

// One sum of partials: dst[c] += the sum over k of partials[k][c].
struct PartialSums {
  float* dst;
  const float* partials;
};

// Up to three sums of partials over the same chunks and columns, for one launch (the first
// `sums` of them; the rest unused).
struct PartialSumsSet {
  PartialSums sum[3];
};

// dst[c] += the sum of partials[k][c] over k < chunks, for the block's 32 columns: lane y adds
// chunks y, y + kChunkLanes, ... in order, then lane 0 adds the lanes' sums in lane order. Of the
// sum of the set that blockIdx.y names (one launch for LayerNorm's two parameter gradients: 25
// launches fewer a GPT-2 step; three where it also feeds a projection's bias gradient).
__global__ void accumulate_partials_kernel(PartialSumsSet set, int chunks, int C) {
  __shared__ float sums[kChunkLanes][kWarpSize];
  float* dst = set.sum[blockIdx.y].dst;
  const float* partials = set.sum[blockIdx.y].partials;
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  float s = 0.f;
  if (c < C)
    for (int k = threadIdx.y; k < chunks; k += kChunkLanes) s += partials[std::size_t(k) * C + c];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  float total = 0.f;
  for (int y = 0; y < kChunkLanes; ++y) total += sums[y][threadIdx.x];
  dst[c] += total;
}

}  // namespace

std::size_t column_sums_workspace(int N, int C) {
  return Workspace::aligned(std::size_t(CEIL_DIV(N, kColumnChunk)) * C * sizeof(float));
}

namespace {

void launch_accumulate(PartialSumsSet set, int sums, int chunks, int C, cudaStream_t stream) {
  CUDA_REQUIRE(chunks > 0 && C > 0, "accumulate_partials", dims({{"chunks", chunks}, {"C", C}}));
  accumulate_partials_kernel<<<dim3(CEIL_DIV(C, kWarpSize), sums), dim3(kWarpSize, kChunkLanes), 0,
                               stream>>>(set, chunks, C);
  CUDA_CHECK_LAUNCH(accumulate_partials_kernel);
}

}  // namespace

void accumulate_partials(float* dst, const float* partials, int chunks, int C,
                         cudaStream_t stream) {
  launch_accumulate({{{dst, partials}}}, 1, chunks, C, stream);
}

void accumulate_partials(float* dst0, const float* partials0, float* dst1, const float* partials1,
                         int chunks, int C, cudaStream_t stream) {
  launch_accumulate({{{dst0, partials0}, {dst1, partials1}}}, 2, chunks, C, stream);
}

void accumulate_partials(float* dst0, const float* partials0, float* dst1, const float* partials1,
                         float* dst2, const float* partials2, int chunks, int C,
                         cudaStream_t stream) {
  launch_accumulate({{{dst0, partials0}, {dst1, partials1}, {dst2, partials2}}}, 3, chunks, C,
                    stream);
}

void column_sums_accumulate(float* dst, TensorIn x, int N, int C, Workspace ws, cudaStream_t stream,
                            __nv_bfloat16* rounded) {
  CUDA_REQUIRE(N > 0 && C > 0, "column_sums_accumulate", dims({{"N", N}, {"C", C}}));
  CUDA_REQUIRE(!rounded || x.type == DType::fp32, "column_sums_accumulate",
               std::string("a rounded copy of a bf16 x"));
  const int chunks = CEIL_DIV(N, kColumnChunk);
  CUDA_REQUIRE(chunks <= 65535, "column_sums_accumulate (grid.y)", dims({{"N", N}}));
  float* partials = ws.take<float>(std::size_t(chunks) * C);
  const auto launch = [&](auto cols, const auto* xs) {
    constexpr int kCols = decltype(cols)::value;
    const dim3 grid(CEIL_DIV(C, kWarpSize * kCols), chunks), block(kWarpSize, kRowLanes);
    column_partials_kernel<kCols><<<grid, block, 0, stream>>>(partials, rounded, xs, N, C);
  };
  typed(x, [&](const auto* xs) {
    // four columns a thread where every row starts aligned to four elements
    if (C % 4 == 0 && aligned_to<4>(xs) && (!rounded || aligned_to<4>(rounded)))
      launch(std::integral_constant<int, 4>{}, xs);
    else
      launch(std::integral_constant<int, 1>{}, xs);
  });
  CUDA_CHECK_LAUNCH(column_partials_kernel);
  accumulate_partials(dst, partials, chunks, C, stream);
}

}  // namespace mixsim::cuda
