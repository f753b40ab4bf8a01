// Column sums of a row-major (N, C) matrix for parameter gradients (biases), deterministic: each
// block sums a fixed chunk of rows for 32 columns in a fixed order, then one thread per column
// adds the chunk sums in chunk order. No atomics, so the result is the same on every run.
// Optionally the same pass writes x rounded to bf16 (the bf16 operand of a gradient's products),
// which saves the rounding pass its own read of x.
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kRowLanes = 8;  // threads per column in a chunk; block = (32 columns, kRowLanes)

template <class In>
__global__ void column_partials_kernel(float* partials, __nv_bfloat16* rounded, const In* x, int N,
                                       int C) {
  __shared__ float sums[kRowLanes][kWarpSize];
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  const int r0 = blockIdx.y * kRowChunk, r1 = min(N, r0 + kRowChunk);
  float s = 0.f;
  if (c < C)
    for (int r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const std::size_t i = std::size_t(r) * C + c;
      const float v = load(x + i);
      s += v;
      if (rounded) rounded[i] = __float2bfloat16_rn(v);
    }
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float total = 0.f;
    for (int k = 0; k < kRowLanes; ++k) total += sums[k][threadIdx.x];
    partials[std::size_t(blockIdx.y) * C + c] = total;
  }
}

__global__ void accumulate_partials_kernel(float* dst, const float* partials, int chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int k = 0; k < chunks; ++k) s += partials[std::size_t(k) * C + c];
  dst[c] += s;
}

}  // namespace

std::size_t column_sums_workspace(int N, int C) {
  return Workspace::aligned(std::size_t(CEIL_DIV(N, kRowChunk)) * C * sizeof(float));
}

void accumulate_partials(float* dst, const float* partials, int chunks, int C,
                         cudaStream_t stream) {
  CUDA_REQUIRE(chunks > 0 && C > 0, "accumulate_partials", dims({{"chunks", chunks}, {"C", C}}));
  const int threads = 256;
  accumulate_partials_kernel<<<CEIL_DIV(C, threads), threads, 0, stream>>>(dst, partials, chunks,
                                                                           C);
  CUDA_CHECK_LAUNCH(accumulate_partials_kernel);
}

void column_sums_accumulate(float* dst, TensorIn x, int N, int C, Workspace ws, cudaStream_t stream,
                            __nv_bfloat16* rounded) {
  CUDA_REQUIRE(N > 0 && C > 0, "column_sums_accumulate", dims({{"N", N}, {"C", C}}));
  CUDA_REQUIRE(!rounded || x.type == DType::fp32, "column_sums_accumulate",
               std::string("a rounded copy of a bf16 x"));
  const int chunks = CEIL_DIV(N, kRowChunk);
  CUDA_REQUIRE(chunks <= 65535, "column_sums_accumulate (grid.y)", dims({{"N", N}}));
  float* partials = ws.take<float>(std::size_t(chunks) * C);
  const dim3 grid(CEIL_DIV(C, kWarpSize), chunks), block(kWarpSize, kRowLanes);
  if (x.type == DType::bf16)
    column_partials_kernel<<<grid, block, 0, stream>>>(
        partials, rounded, static_cast<const __nv_bfloat16*>(x.data), N, C);
  else
    column_partials_kernel<<<grid, block, 0, stream>>>(partials, rounded,
                                                       static_cast<const float*>(x.data), N, C);
  CUDA_CHECK_LAUNCH(column_partials_kernel);
  accumulate_partials(dst, partials, chunks, C, stream);
}

}  // namespace mixsim::cuda
