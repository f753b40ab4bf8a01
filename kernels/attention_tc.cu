// Fused causal self-attention on bf16 tensor cores (WMMA 16x16x16, fp32 accumulation), for the
// cuda-bf16 backend; head sizes 16..128 in steps of 16 (attention.cu serves the others and the
// fp32 backend). Inputs and outputs stay fp32 (the op interface); tiles are rounded to bf16 as
// they are loaded into shared memory, as cuda-bf16 does for the operands of every product.
//
// A block takes kRows = 64 rows of one (batch, head), 16 per warp, and walks the other side in
// tiles of 64 rows. The products run on tensor cores through WMMA; a warp stores its 16 x 64
// scores to shared memory, where its lanes (two per row, 32 columns each) apply the mask and the
// softmax, and writes the bf16 probabilities (or their gradients) back for the next product.
// WMMA leaves the element layout of an accumulator unspecified, so nothing per row is done on
// accumulators in registers: instead of an online softmax with rescaled outputs,
// - forward: pass 1 computes each row's max and sum over all key tiles (scores only); pass 2
//   recomputes the scores, forms P = exp(scale s - lse) (normalised, the same P that backward
//   recomputes) and accumulates P V. Nothing of size T x T is stored; lse per row is saved.
// - backward, as attention.cu: a query-major kernel for dq (dS K; also stores D = dout . out)
//   and a key-major kernel for dk (dS^T Q) and dv (P^T dout), so that every output row is summed
//   by one warp in a fixed order: deterministic, no atomics.
// Rows past T are loaded as zeros and masked; a warp whose rows all lie past T skips the products
// (uniformly) but still takes part in the block's barriers.
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kRows = 64;  // rows of a block, and of a tile of the other side
constexpr int kWarps = 4;  // 16 rows each
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kSld = kRows + 4;  // fp32 score rows (a multiple of 4, as WMMA needs)
constexpr int kPld = kRows + 8;  // bf16 probability rows (a multiple of 8)
static_assert(kWarps * 16 == kRows, "a warp owns 16 rows of the block");

// Leading dimension of a bf16 tile of head-size rows: a multiple of 8 elements (WMMA), and the
// +8 spreads the rows of a fragment over the shared-memory banks. Every fragment starts at a row
// that is a multiple of 16 and a column that is a multiple of 16, so it is 32-byte aligned.
template <int HS>
__host__ __device__ constexpr int tile_ld() {
  return HS + 8;
}

template <int HS>
constexpr std::size_t tile_bytes() {
  return std::size_t(kRows) * tile_ld<HS>() * sizeof(bf16);
}
constexpr std::size_t kScoreBytes = std::size_t(kWarps) * 16 * kSld * sizeof(float);
constexpr std::size_t kProbBytes = std::size_t(kWarps) * 16 * kPld * sizeof(bf16);

// Shared memory of each kernel: bf16 tiles, fp32 score scratch, bf16 probability scratch, and
// per-row vectors. Every region is a multiple of 256 bytes, so each starts 32-byte aligned.
template <int HS>
constexpr std::size_t forward_shared() {
  return 3 * tile_bytes<HS>() + kScoreBytes + kProbBytes;
}
template <int HS>
constexpr std::size_t backward_dq_shared() {
  return 4 * tile_bytes<HS>() + 2 * kScoreBytes + kProbBytes + 2 * kRows * sizeof(float);
}
template <int HS>
constexpr std::size_t backward_dkdv_shared() {
  return 4 * tile_bytes<HS>() + 2 * kScoreBytes + 2 * kProbBytes + 2 * kRows * sizeof(float);
}
// The outputs are staged per warp in (16, HS + 4) fp32 rows over two tiles that are no longer
// needed: 4 * 16 * (HS + 4) * 4 bytes <= 2 * 64 * (HS + 8) * 2 bytes.
template <int HS>
__host__ __device__ constexpr int stage_ld() {
  return HS + 4;
}
static_assert(kWarps * 16 * (128 + 4) * sizeof(float) <= 2 * kRows * (128 + 8) * sizeof(bf16));

// tile[r, d] = bf16(src[(first + r) * stride + d]) for the kRows rows from `first`; zero past T.
template <int HS>
__device__ inline void load_tile(bf16* tile, const float* src, std::size_t stride, int first,
                                 int T) {
  for (int idx = threadIdx.x; idx < kRows * HS; idx += blockDim.x) {
    const int r = idx / HS, d = idx % HS, row = first + r;
    tile[r * tile_ld<HS>() + d] =
        __float2bfloat16(row < T ? src[std::size_t(row) * stride + d] : 0.f);
  }
}

// s (16 x 64, fp32, row-major, kSld) = a (16 x HS) . b^T, with b the 64 rows of a tile (64 x HS):
// the scores of a warp's 16 rows against a whole tile.
template <int HS>
__device__ inline void products_with_tile(float* s, const bf16* a, const bf16* b) {
  constexpr int LD = tile_ld<HS>();
#pragma unroll
  for (int n = 0; n < kRows / 16; ++n) {
    FragC c;
    wmma::fill_fragment(c, 0.f);
#pragma unroll
    for (int k = 0; k < HS; k += 16) {
      FragA fa;
      FragBCol fb;  // element (k, n) of b^T is b[n][k]: b read column-major
      wmma::load_matrix_sync(fa, a + k, LD);
      wmma::load_matrix_sync(fb, b + n * 16 * LD + k, LD);
      wmma::mma_sync(c, fa, fb, c);
    }
    wmma::store_matrix_sync(s + n * 16, c, kSld, wmma::mem_row_major);
  }
}

// acc (16 x HS) += p (16 x 64, bf16, kPld) . m (64 x HS, a tile).
template <int HS>
__device__ inline void accumulate(FragC (&acc)[HS / 16], const bf16* p, const bf16* m) {
  constexpr int LD = tile_ld<HS>();
#pragma unroll
  for (int k = 0; k < kRows; k += 16) {
    FragA fa;
    wmma::load_matrix_sync(fa, p + k, kPld);
#pragma unroll
    for (int n = 0; n < HS / 16; ++n) {
      FragBRow fb;
      wmma::load_matrix_sync(fb, m + k * LD + n * 16, LD);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

template <int HS>
__device__ inline void zero(FragC (&acc)[HS / 16]) {
#pragma unroll
  for (int n = 0; n < HS / 16; ++n) wmma::fill_fragment(acc[n], 0.f);
}

// dst[(first + r) * stride + d] = factor * acc[r, d] for the warp's 16 rows below T, through the
// warp's staging rows (coalesced stores along d).
template <int HS>
__device__ inline void store_rows(float* dst, std::size_t stride, int first, int T,
                                  const FragC (&acc)[HS / 16], float* stage, float factor) {
  constexpr int LDO = stage_ld<HS>();
#pragma unroll
  for (int n = 0; n < HS / 16; ++n)
    wmma::store_matrix_sync(stage + n * 16, acc[n], LDO, wmma::mem_row_major);
  __syncwarp();
  for (int idx = threadIdx.x % kWarpSize; idx < 16 * HS; idx += kWarpSize) {
    const int r = idx / HS, d = idx % HS, row = first + r;
    if (row < T) dst[std::size_t(row) * stride + d] = factor * stage[r * LDO + d];
  }
  __syncwarp();  // the stage may be written again
}

// Where the rows of one (batch, head) live.
struct Head {
  const float* q;           // row t at q + t * qkv_stride; k = q + C, v = q + 2C
  std::size_t qkv_stride;   // 3C
  std::size_t row_offset;   // (b, t, h) of a (B,T,C) tensor: row_offset + t * C
  std::size_t lse_offset;   // (b, h, t) of a (B,NH,T) tensor: lse_offset + t
  std::size_t dqkv_offset;  // (b, t, h) of the q part of a (B,T,3C) tensor: + t * 3C
};

template <int HS>
__device__ inline Head head_of(const float* qkv, int T, int C, int NH) {
  const std::size_t b = blockIdx.z, h = blockIdx.y, stride = 3 * std::size_t(C);
  return {qkv + b * T * stride + h * HS, stride, b * T * C + h * HS, (b * NH + h) * T,
          b * T * stride + h * HS};
}

template <int HS>
__global__ void __launch_bounds__(kThreads)
    attention_forward_tc_kernel(float* out, float* lse, const float* qkv, int T, int C, int NH,
                                float scale) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);                   // (64, LD) the block's queries
  bf16* ks = qs + kRows * LD;                                 // (64, LD) a key tile
  bf16* vs = ks + kRows * LD;                                 // (64, LD) its values
  float* scores = reinterpret_cast<float*>(vs + kRows * LD);  // (warps, 16, kSld)
  bf16* probs = reinterpret_cast<bf16*>(scores + kWarps * 16 * kSld);  // (warps, 16, kPld)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int r = lane / 2, col0 = (lane % 2) * 32;  // this lane's row of the warp's 16, columns
  const Head head = head_of<HS>(qkv, T, C, NH);
  const int i0 = blockIdx.x * kRows, iw = i0 + warp * 16, i = iw + r;
  const int last = min(T, i0 + kRows) - 1;
  const bool live = iw < T;  // uniform over the warp
  float* s = scores + warp * 16 * kSld;
  bf16* p = probs + warp * 16 * kPld;
  load_tile<HS>(qs, head.q, head.qkv_stride, i0, T);

  // Pass 1: max and sum of each row. Tiles start at multiples of 64 up to i0, so every row below
  // T sees the first key of every tile: the max is finite from the first tile on.
  float m = -INFINITY, l = 0.f;
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();  // the previous tile is consumed (and the queries are visible)
    load_tile<HS>(ks, head.q + C, head.qkv_stride, j0, T);
    __syncthreads();
    if (!live) continue;
    products_with_tile<HS>(s, qs + warp * 16 * LD, ks);
    __syncwarp();
    float x[32], tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int j = j0 + col0 + c;
      x[c] = i < T && j <= i ? scale * s[r * kSld + col0 + c] : -INFINITY;
      tile_max = fmaxf(tile_max, x[c]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    float sum = 0.f;
    if (m_new != -INFINITY) {  // -inf only on rows past T
#pragma unroll
      for (int c = 0; c < 32; ++c) sum += expf(x[c] - m_new);
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);  // both lanes of the row: the same sum
    l = m_new == -INFINITY ? 0.f : l * expf(m - m_new) + sum;
    m = m_new;
  }
  const float row_lse = m + logf(l);
  if (lse && lane % 2 == 0 && i < T) lse[head.lse_offset + i] = row_lse;

  // Pass 2: out = P V with P = exp(scale s - lse).
  FragC acc[HS / 16];
  zero<HS>(acc);
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();
    load_tile<HS>(ks, head.q + C, head.qkv_stride, j0, T);
    load_tile<HS>(vs, head.q + 2 * C, head.qkv_stride, j0, T);
    __syncthreads();
    if (!live) continue;
    products_with_tile<HS>(s, qs + warp * 16 * LD, ks);
    __syncwarp();
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int j = j0 + col0 + c;
      const float pv = i < T && j <= i ? expf(scale * s[r * kSld + col0 + c] - row_lse) : 0.f;
      p[r * kPld + col0 + c] = __float2bfloat16(pv);
    }
    __syncwarp();
    accumulate<HS>(acc, p, vs);
  }
  __syncthreads();  // every warp is done with the query and key tiles: they become the stage
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * stage_ld<HS>();
  if (live) store_rows<HS>(out + head.row_offset, C, iw, T, acc, stage, 1.f);
}

// Query-major: dq of the block's rows (dS K), and D_i = dout_i . out_i for the key-major kernel.
template <int HS>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_tc_kernel(float* dqkv, float* dvec, const float* dout, const float* qkv,
                                    const float* out, const float* lse, int T, int C, int NH,
                                    float scale) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);                   // (64, LD) the block's queries
  bf16* gs = qs + kRows * LD;                                 // (64, LD) their dout rows
  bf16* ks = gs + kRows * LD;                                 // (64, LD) a key tile
  bf16* vs = ks + kRows * LD;                                 // (64, LD) its values
  float* scores = reinterpret_cast<float*>(vs + kRows * LD);  // (warps, 16, kSld) S
  float* dscores = scores + kWarps * 16 * kSld;               // (warps, 16, kSld) dout V^T
  bf16* dprobs = reinterpret_cast<bf16*>(dscores + kWarps * 16 * kSld);    // (warps, 16, kPld) dS
  float* row_lse = reinterpret_cast<float*>(dprobs + kWarps * 16 * kPld);  // (64)
  float* row_d = row_lse + kRows;                                          // (64)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int r = lane / 2, col0 = (lane % 2) * 32;
  const Head head = head_of<HS>(qkv, T, C, NH);
  const int i0 = blockIdx.x * kRows, iw = i0 + warp * 16, i = iw + r;
  const int last = min(T, i0 + kRows) - 1;
  const bool live = iw < T;
  float* s = scores + warp * 16 * kSld;
  float* ds = dscores + warp * 16 * kSld;
  bf16* p = dprobs + warp * 16 * kPld;
  load_tile<HS>(qs, head.q, head.qkv_stride, i0, T);
  load_tile<HS>(gs, dout + head.row_offset, C, i0, T);
  for (int rr = 0; rr < 16; ++rr) {  // the warp's rows: D in fp32, summed as attention.cu does
    const int row = iw + rr;
    const std::size_t at = head.row_offset + std::size_t(row) * C;
    float part = 0.f;
    if (row < T)
      for (int d = lane; d < HS; d += kWarpSize) part += dout[at + d] * out[at + d];
    part = warp_sum(part);
    if (lane == 0) {
      row_d[warp * 16 + rr] = part;
      row_lse[warp * 16 + rr] = row < T ? lse[head.lse_offset + row] : 0.f;
      if (row < T) dvec[head.lse_offset + row] = part;
    }
  }

  FragC dq[HS / 16];
  zero<HS>(dq);
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();  // also makes row_d and row_lse visible
    load_tile<HS>(ks, head.q + C, head.qkv_stride, j0, T);
    load_tile<HS>(vs, head.q + 2 * C, head.qkv_stride, j0, T);
    __syncthreads();
    if (!live) continue;
    products_with_tile<HS>(s, qs + warp * 16 * LD, ks);   // S
    products_with_tile<HS>(ds, gs + warp * 16 * LD, vs);  // dP = dout V^T
    __syncwarp();
    const float li = row_lse[warp * 16 + r], di = row_d[warp * 16 + r];
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int j = j0 + col0 + c, at = r * kSld + col0 + c;
      float dsv = 0.f;
      if (i < T && j <= i) dsv = expf(scale * s[at] - li) * (ds[at] - di);
      p[r * kPld + col0 + c] = __float2bfloat16(dsv);
    }
    __syncwarp();
    accumulate<HS>(dq, p, ks);
  }
  __syncthreads();
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * stage_ld<HS>();
  if (live) store_rows<HS>(dqkv + head.dqkv_offset, head.qkv_stride, iw, T, dq, stage, scale);
}

// Key-major: dk (dS^T Q) and dv (P^T dout) of the block's key rows, over the query tiles at or
// after them.
template <int HS>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_tc_kernel(float* dqkv, const float* dout, const float* qkv,
                                      const float* lse, const float* dvec, int T, int C, int NH,
                                      float scale) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);                   // (64, LD) a query tile
  bf16* gs = qs + kRows * LD;                                 // (64, LD) its dout rows
  bf16* ks = gs + kRows * LD;                                 // (64, LD) the block's keys
  bf16* vs = ks + kRows * LD;                                 // (64, LD) their values
  float* scores = reinterpret_cast<float*>(vs + kRows * LD);  // (warps, 16, kSld) S^T
  float* dscores = scores + kWarps * 16 * kSld;               // (warps, 16, kSld) V dout^T
  bf16* probs = reinterpret_cast<bf16*>(dscores + kWarps * 16 * kSld);  // (warps, 16, kPld) P^T
  bf16* dprobs = probs + kWarps * 16 * kPld;                            // (warps, 16, kPld) dS^T
  float* tile_lse = reinterpret_cast<float*>(dprobs + kWarps * 16 * kPld);  // (64)
  float* tile_d = tile_lse + kRows;                                         // (64)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int r = lane / 2, col0 = (lane % 2) * 32;
  const Head head = head_of<HS>(qkv, T, C, NH);
  const int j0 = blockIdx.x * kRows, jw = j0 + warp * 16, j = jw + r;
  const bool live = jw < T;
  float* s = scores + warp * 16 * kSld;
  float* ds = dscores + warp * 16 * kSld;
  bf16* pt = probs + warp * 16 * kPld;
  bf16* dst = dprobs + warp * 16 * kPld;
  load_tile<HS>(ks, head.q + C, head.qkv_stride, j0, T);
  load_tile<HS>(vs, head.q + 2 * C, head.qkv_stride, j0, T);

  FragC dk[HS / 16], dv[HS / 16];
  zero<HS>(dk);
  zero<HS>(dv);
  for (int t0 = j0; t0 < T; t0 += kRows) {  // queries before j0 see none of the block's keys
    __syncthreads();
    load_tile<HS>(qs, head.q, head.qkv_stride, t0, T);
    load_tile<HS>(gs, dout + head.row_offset, C, t0, T);
    if (threadIdx.x < kRows) {
      const int row = t0 + threadIdx.x;
      tile_lse[threadIdx.x] = row < T ? lse[head.lse_offset + row] : 0.f;
      tile_d[threadIdx.x] = row < T ? dvec[head.lse_offset + row] : 0.f;
    }
    __syncthreads();
    if (!live) continue;
    products_with_tile<HS>(s, ks + warp * 16 * LD, qs);   // S^T: the warp's keys x the queries
    products_with_tile<HS>(ds, vs + warp * 16 * LD, gs);  // dP^T = V dout^T
    __syncwarp();
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int col = col0 + c, ii = t0 + col, at = r * kSld + col;
      float pv = 0.f, dsv = 0.f;
      if (j < T && ii < T && ii >= j) {
        pv = expf(scale * s[at] - tile_lse[col]);
        dsv = pv * (ds[at] - tile_d[col]);
      }
      pt[r * kPld + col] = __float2bfloat16(pv);
      dst[r * kPld + col] = __float2bfloat16(dsv);
    }
    __syncwarp();
    accumulate<HS>(dv, pt, gs);
    accumulate<HS>(dk, dst, qs);
  }
  __syncthreads();
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * stage_ld<HS>();
  if (live) {
    float* rows = dqkv + head.dqkv_offset;
    store_rows<HS>(rows + C, head.qkv_stride, jw, T, dk, stage, scale);
    store_rows<HS>(rows + 2 * C, head.qkv_stride, jw, T, dv, stage, 1.f);
  }
}

struct Plan {
  dim3 grid;
  float scale;
  int HS;
};

Plan check_and_plan(const char* op, int B, int T, int C, int NH) {
  CUDA_REQUIRE(B > 0 && T > 0 && C > 0 && NH > 0, op,
               dims({{"B", B}, {"T", T}, {"C", C}, {"NH", NH}}));
  CUDA_REQUIRE(C % NH == 0 && (C / NH) % 16 == 0 && C / NH <= 128, op,
               dims({{"C", C}, {"NH", NH}}));
  CUDA_REQUIRE(B <= 65535 && NH <= 65535, op, dims({{"B", B}, {"NH", NH}}));
  // The same scale as the CPU backend: 1 / sqrt(HS) rounded to float.
  const int HS = C / NH;
  return {dim3(CEIL_DIV(T, kRows), NH, B), 1.0f / std::sqrt(float(HS)), HS};
}

// Calls fn(std::integral_constant<int, HS>) for a supported head size.
template <class Fn>
void with_head_size(int HS, Fn&& fn) {
  switch (HS) {
    case 16:
      fn(std::integral_constant<int, 16>{});
      break;
    case 32:
      fn(std::integral_constant<int, 32>{});
      break;
    case 48:
      fn(std::integral_constant<int, 48>{});
      break;
    case 64:
      fn(std::integral_constant<int, 64>{});
      break;
    case 80:
      fn(std::integral_constant<int, 80>{});
      break;
    case 96:
      fn(std::integral_constant<int, 96>{});
      break;
    case 112:
      fn(std::integral_constant<int, 112>{});
      break;
    default:
      fn(std::integral_constant<int, 128>{});
      break;
  }
}

}  // namespace

bool attention_tc_supported(int C, int NH, std::size_t max_shared) {
  if (NH <= 0 || C <= 0 || C % NH != 0) return false;
  const int HS = C / NH;
  if (HS % 16 != 0 || HS < 16 || HS > 128) return false;
  std::size_t needed = 0;
  with_head_size(HS, [&](auto hs) {
    constexpr int H = decltype(hs)::value;
    needed = std::max({forward_shared<H>(), backward_dq_shared<H>(), backward_dkdv_shared<H>()});
  });
  return needed <= max_shared;
}

std::size_t max_shared_per_block(int device) {
  int bytes = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return std::size_t(bytes);
}

void attention_forward_tc(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                          cudaStream_t stream) {
  const Plan plan = check_and_plan("attention_forward (tensor cores)", B, T, C, NH);
  with_head_size(plan.HS, [&](auto hs) {
    constexpr int HS = decltype(hs)::value;
    auto* kernel = attention_forward_tc_kernel<HS>;
    allow_dynamic_shared(kernel, forward_shared<HS>());
    kernel<<<plan.grid, kThreads, forward_shared<HS>(), stream>>>(out, lse, qkv, T, C, NH,
                                                                  plan.scale);
    CUDA_CHECK_LAUNCH(attention_forward_tc_kernel);
  });
}

void attention_backward_tc(float* dqkv, const float* dout, const float* qkv, const float* out,
                           const float* lse, int B, int T, int C, int NH, Workspace ws,
                           cudaStream_t stream) {
  const Plan plan = check_and_plan("attention_backward (tensor cores)", B, T, C, NH);
  CUDA_REQUIRE(lse != nullptr, "attention_backward (tensor cores)",
               std::string("no log-sum-exp saved by attention_forward"));
  float* dvec = ws.take<float>(std::size_t(B) * NH * T);  // (B, NH, T)
  with_head_size(plan.HS, [&](auto hs) {
    constexpr int HS = decltype(hs)::value;
    auto* dq_kernel = attention_backward_dq_tc_kernel<HS>;
    allow_dynamic_shared(dq_kernel, backward_dq_shared<HS>());
    dq_kernel<<<plan.grid, kThreads, backward_dq_shared<HS>(), stream>>>(dqkv, dvec, dout, qkv, out,
                                                                         lse, T, C, NH, plan.scale);
    CUDA_CHECK_LAUNCH(attention_backward_dq_tc_kernel);
    auto* dkdv_kernel = attention_backward_dkdv_tc_kernel<HS>;
    allow_dynamic_shared(dkdv_kernel, backward_dkdv_shared<HS>());
    dkdv_kernel<<<plan.grid, kThreads, backward_dkdv_shared<HS>(), stream>>>(
        dqkv, dout, qkv, lse, dvec, T, C, NH, plan.scale);
    CUDA_CHECK_LAUNCH(attention_backward_dkdv_tc_kernel);
  });
}

}  // namespace mixsim::cuda
