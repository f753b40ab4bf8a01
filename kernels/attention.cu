// Fused causal self-attention, flash style, in fp32. A block takes kWarps consecutive rows of one
// (batch, head), one row per warp, and walks the other side in tiles of 32 rows held in shared
// memory, one row per lane. Nothing of size T x T is ever stored:
// - forward: per query row an online softmax (running max and sum) over key tiles; the output
//   and the log-sum-exp of the row (the backward pass's only saved state) are written at the end.
// - backward: probabilities are recomputed from the log-sum-exp. With P = softmax(scale q k^T),
//   D_i = dout_i . out_i and dS = P (dout v^T - D): dq = scale dS k, dk = scale dS^T q,
//   dv = P^T dout. Two kernels, so that every output row is summed by one warp in a fixed order
//   (no atomics): a query-major one for dq (which also stores D), a key-major one for dk, dv.
// Rows past T in a tile are loaded as zeros, so masked lanes never multiply garbage.
#include <cmath>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kWarps = 8;                           // rows of a block, one per warp
constexpr int kTile = kWarpSize;                    // rows of a shared tile, one per lane
constexpr int kPerLane = kMaxHeadSize / kWarpSize;  // head dims per lane: d = lane + 32 r
constexpr int kThreads = kWarps * kWarpSize;

// An odd row stride: lane l reading element d of tile row l hits bank (l * ld + d) % 32, all
// different when ld is odd.
__host__ __device__ inline int tile_ld(int HS) {
  return HS % 2 ? HS : HS + 1;
}

// Shared memory of every kernel here: two tiles, two per-warp rows, two per-tile vectors.
std::size_t shared_bytes(int HS) {
  return sizeof(float) *
         (2 * std::size_t(kTile) * tile_ld(HS) + 2 * std::size_t(kWarps) * HS + 2 * kTile);
}

// Where the rows of one (batch, head) live.
struct Head {
  const float* q;  // row t at q + t * qkv_stride; k = q + C, v = q + 2C
  std::size_t qkv_stride;
  std::size_t row_offset;  // (b, t, h) of a (B,T,C) tensor: row_offset + t * C
  std::size_t lse_offset;  // (b, h, t) of a (B,NH,T) tensor: lse_offset + t
};

__device__ inline Head head_of(const float* qkv, int T, int C, int NH, int HS) {
  const std::size_t b = blockIdx.z, h = blockIdx.y;
  const std::size_t stride = 3 * std::size_t(C);
  return {qkv + b * T * stride + h * HS, stride, b * T * C + h * HS, (b * NH + h) * T};
}

// tile[r, d] = src[(first + r) * stride + d] for the kTile rows from `first`; zero past T.
__device__ inline void load_tile(float* tile, const float* src, std::size_t stride, int first,
                                 int T, int HS) {
  const int ld = tile_ld(HS);
  for (int idx = threadIdx.x; idx < kTile * HS; idx += blockDim.x) {
    const int r = idx / HS, d = idx % HS, row = first + r;
    tile[r * ld + d] = row < T ? src[std::size_t(row) * stride + d] : 0.f;
  }
}

// The warp's own row (HS values) into shared memory; row < T.
__device__ inline void load_row(float* dst, const float* src, int HS) {
  for (int d = threadIdx.x % kWarpSize; d < HS; d += kWarpSize) dst[d] = src[d];
}

// a . tile row `lane` (a is a per-warp row in shared memory, read as a broadcast).
__device__ inline float dot_tile_row(const float* a, const float* tile, int lane, int HS) {
  const float* t = tile + lane * tile_ld(HS);
  float s = 0.f;
  for (int d = 0; d < HS; ++d) s += a[d] * t[d];
  return s;
}

// acc[r] += sum over tile rows jj of w_jj * tile[jj, lane + 32 r], w_jj held by lane jj.
__device__ inline void add_weighted_rows(float (&acc)[kPerLane], float w, const float* tile,
                                         int HS) {
  const int lane = threadIdx.x % kWarpSize, ld = tile_ld(HS);
  for (int jj = 0; jj < kTile; ++jj) {
    const float wj = __shfl_sync(kFullMask, w, jj);
    const float* row = tile + jj * ld;
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int d = lane + kWarpSize * r;
      if (d < HS) acc[r] += wj * row[d];
    }
  }
}

__device__ inline void store_row(float* dst, const float (&acc)[kPerLane], float factor, int HS) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int d = lane + kWarpSize * r;
    if (d < HS) dst[d] = acc[r] * factor;
  }
}

__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(float* out, float* lse, const float* qkv, int T, int C, int NH, int HS,
                             float scale) {
  extern __shared__ float smem[];
  const int ld = tile_ld(HS), warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* ks = smem;                        // (kTile, ld) keys
  float* vs = ks + kTile * ld;             // (kTile, ld) values
  float* q = vs + kTile * ld + warp * HS;  // this warp's query row
  const Head head = head_of(qkv, T, C, NH, HS);
  const int i0 = blockIdx.x * kWarps, i = i0 + warp;
  const int last = min(T, i0 + kWarps) - 1;  // the block's last query row
  if (i < T) load_row(q, head.q + i * head.qkv_stride, HS);

  float m = -INFINITY, l = 0.f, acc[kPerLane] = {};
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();  // the previous tiles are consumed (and q is visible)
    load_tile(ks, head.q + C, head.qkv_stride, j0, T, HS);
    load_tile(vs, head.q + 2 * C, head.qkv_stride, j0, T, HS);
    __syncthreads();
    if (i >= T || j0 > i) continue;  // the whole warp: no visible key in this tile
    const int j = j0 + lane;
    const float s = j <= i ? scale * dot_tile_row(q, ks, lane, HS) : -INFINITY;
    const float m_new = fmaxf(m, warp_max(s));  // finite: key j0 <= i is visible
    const float correction = expf(m - m_new);   // 0 on the first tile (m = -inf)
    const float p = expf(s - m_new);            // 0 for masked keys
    l = l * correction + warp_sum(p);
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) acc[r] *= correction;
    add_weighted_rows(acc, p, vs, HS);
    m = m_new;
  }
  if (i >= T) return;
  store_row(out + head.row_offset + std::size_t(i) * C, acc, 1.f / l, HS);
  if (lse && lane == 0) lse[head.lse_offset + i] = m + logf(l);
}

// Query-major: dq of the block's query rows, and D_i = dout_i . out_i for the key-major kernel.
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(float* dqkv, float* dvec, const float* dout, const float* qkv,
                                 const float* out, const float* lse, int T, int C, int NH, int HS,
                                 float scale) {
  extern __shared__ float smem[];
  const int ld = tile_ld(HS), warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* ks = smem;                        // (kTile, ld) keys
  float* vs = ks + kTile * ld;             // (kTile, ld) values
  float* q = vs + kTile * ld + warp * HS;  // this warp's query row
  float* g = q + kWarps * HS;              // this warp's dout row
  const Head head = head_of(qkv, T, C, NH, HS);
  const int i0 = blockIdx.x * kWarps, i = i0 + warp;
  const int last = min(T, i0 + kWarps) - 1;
  float D = 0.f, row_lse = 0.f;
  if (i < T) {
    const std::size_t row = head.row_offset + std::size_t(i) * C;
    load_row(q, head.q + i * head.qkv_stride, HS);
    load_row(g, dout + row, HS);
    float part = 0.f;
    for (int d = lane; d < HS; d += kWarpSize) part += dout[row + d] * out[row + d];
    D = warp_sum(part);
    if (lane == 0) dvec[head.lse_offset + i] = D;
    row_lse = lse[head.lse_offset + i];
  }

  float dq[kPerLane] = {};
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();
    load_tile(ks, head.q + C, head.qkv_stride, j0, T, HS);
    load_tile(vs, head.q + 2 * C, head.qkv_stride, j0, T, HS);
    __syncthreads();
    if (i >= T || j0 > i) continue;
    const int j = j0 + lane;
    float ds = 0.f;
    if (j <= i) {
      const float p = expf(scale * dot_tile_row(q, ks, lane, HS) - row_lse);
      ds = p * (dot_tile_row(g, vs, lane, HS) - D);
    }
    add_weighted_rows(dq, ds, ks, HS);
  }
  if (i >= T) return;
  const std::size_t q_row = std::size_t(blockIdx.z) * T + i;
  store_row(dqkv + q_row * head.qkv_stride + std::size_t(blockIdx.y) * HS, dq, scale, HS);
}

// Key-major: dk and dv of the block's key rows, over the query tiles at or after them.
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(float* dqkv, const float* dout, const float* qkv,
                                   const float* lse, const float* dvec, int T, int C, int NH,
                                   int HS, float scale) {
  extern __shared__ float smem[];
  const int ld = tile_ld(HS), warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* qs = smem;                                     // (kTile, ld) queries
  float* gs = qs + kTile * ld;                          // (kTile, ld) dout rows
  float* k = gs + kTile * ld + warp * HS;               // this warp's key row
  float* v = k + kWarps * HS;                           // this warp's value row
  float* tile_lse = gs + kTile * ld + 2 * kWarps * HS;  // (kTile)
  float* tile_d = tile_lse + kTile;                     // (kTile)
  const Head head = head_of(qkv, T, C, NH, HS);
  const int j0 = blockIdx.x * kWarps, j = j0 + warp;
  if (j < T) {
    load_row(k, head.q + C + j * head.qkv_stride, HS);
    load_row(v, head.q + 2 * C + j * head.qkv_stride, HS);
  }

  float dk[kPerLane] = {}, dv[kPerLane] = {};
  for (int t0 = j0; t0 < T; t0 += kTile) {  // queries before j0 see none of the block's keys
    __syncthreads();
    load_tile(qs, head.q, head.qkv_stride, t0, T, HS);
    load_tile(gs, dout + head.row_offset, C, t0, T, HS);
    if (threadIdx.x < kTile) {
      const int row = t0 + threadIdx.x;
      tile_lse[threadIdx.x] = row < T ? lse[head.lse_offset + row] : 0.f;
      tile_d[threadIdx.x] = row < T ? dvec[head.lse_offset + row] : 0.f;
    }
    __syncthreads();
    if (j >= T || t0 + kTile - 1 < j) continue;  // the whole warp: no query sees key j here
    const int i = t0 + lane;
    float p = 0.f, ds = 0.f;
    if (i >= j && i < T) {
      p = expf(scale * dot_tile_row(k, qs, lane, HS) - tile_lse[lane]);
      ds = p * (dot_tile_row(v, gs, lane, HS) - tile_d[lane]);
    }
    add_weighted_rows(dv, p, gs, HS);
    add_weighted_rows(dk, ds, qs, HS);
  }
  if (j >= T) return;
  float* row =
      dqkv + (std::size_t(blockIdx.z) * T + j) * head.qkv_stride + std::size_t(blockIdx.y) * HS;
  store_row(row + C, dk, scale, HS);
  store_row(row + 2 * C, dv, 1.f, HS);
}

struct Launch {
  dim3 grid;
  std::size_t shared;
  float scale;
};

Launch check_and_plan(const char* op, int B, int T, int C, int NH) {
  CUDA_REQUIRE(B > 0 && T > 0 && C > 0 && NH > 0, op,
               dims({{"B", B}, {"T", T}, {"C", C}, {"NH", NH}}));
  CUDA_REQUIRE(C % NH == 0, op, dims({{"C", C}, {"NH", NH}}));
  const int HS = C / NH;
  CUDA_REQUIRE(HS <= kMaxHeadSize, op, dims({{"HS", HS}, {"kMaxHeadSize", kMaxHeadSize}}));
  CUDA_REQUIRE(B <= 65535 && NH <= 65535, op, dims({{"B", B}, {"NH", NH}}));
  // The same scale as the CPU backend: 1 / sqrt(HS) rounded to float.
  const float scale = 1.0f / std::sqrt(float(HS));
  return {dim3(CEIL_DIV(T, kWarps), NH, B), shared_bytes(HS), scale};
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream) {
  const Launch l = check_and_plan("attention_forward", B, T, C, NH);
  attention_forward_kernel<<<l.grid, kThreads, l.shared, stream>>>(out, lse, qkv, T, C, NH, C / NH,
                                                                   l.scale);
  CUDA_CHECK_LAUNCH(attention_forward_kernel);
}

std::size_t attention_backward_workspace(int B, int T, int NH) {
  return Workspace::aligned(std::size_t(B) * NH * T * sizeof(float));
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH, Workspace ws,
                        cudaStream_t stream) {
  const Launch l = check_and_plan("attention_backward", B, T, C, NH);
  CUDA_REQUIRE(lse != nullptr, "attention_backward",
               std::string("no log-sum-exp saved by attention_forward"));
  float* dvec = ws.take<float>(std::size_t(B) * NH * T);  // (B, NH, T)
  attention_backward_dq_kernel<<<l.grid, kThreads, l.shared, stream>>>(
      dqkv, dvec, dout, qkv, out, lse, T, C, NH, C / NH, l.scale);
  CUDA_CHECK_LAUNCH(attention_backward_dq_kernel);
  attention_backward_dkdv_kernel<<<l.grid, kThreads, l.shared, stream>>>(dqkv, dout, qkv, lse, dvec,
                                                                         T, C, NH, C / NH, l.scale);
  CUDA_CHECK_LAUNCH(attention_backward_dkdv_kernel);
}

}  // namespace mixsim::cuda
