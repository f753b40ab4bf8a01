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
#include <cstdint>
#include <cstring>
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
  std::size_t qkv_stride;  // 3C
  std::size_t qkv_offset;  // (b, t, h) of the q part of a (B,T,3C) tensor: + t * 3C (k: + C,
                           // v: + 2C)
  std::size_t row_offset;  // (b, t, h) of a (B,T,C) tensor: row_offset + t * C
  std::size_t lse_offset;  // (b, h, t) of a (B,NH,T) tensor: lse_offset + t
};

template <int HS>
__device__ inline Head head_of(int T, int C, int NH) {
  const std::size_t b = blockIdx.z, h = blockIdx.y, stride = 3 * std::size_t(C);
  return {stride, b * T * stride + h * HS, b * T * C + h * HS, (b * NH + h) * T};
}

// Of the warp's 16 rows from iw, for both backward kernels: D = dout . out in fp32 (summed as
// attention.cu does) into row_d[0..15] and dvec, lse * lse_factor into row_lse[0..15] (0 past T).
template <int HS>
__device__ inline void row_terms(float* row_d, float* row_lse, float* dvec, const float* dout,
                                 const float* out, const float* lse, const Head& head, int iw,
                                 int T, int C, float lse_factor) {
  const int lane = threadIdx.x % kWarpSize;
  for (int rr = 0; rr < 16; ++rr) {
    const int row = iw + rr;
    const std::size_t at = head.row_offset + std::size_t(row) * C;
    float part = 0.f;
    if (row < T)
      for (int d = lane; d < HS; d += kWarpSize) part += dout[at + d] * out[at + d];
    part = warp_sum(part);
    if (lane == 0) {
      row_d[rr] = part;
      row_lse[rr] = row < T ? lse[head.lse_offset + row] * lse_factor : 0.f;
      if (row < T) dvec[head.lse_offset + row] = part;
    }
  }
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
  const Head head = head_of<HS>(T, C, NH);
  const float* q = qkv + head.qkv_offset;  // row t at q + t * 3C; k = q + C, v = q + 2C
  const int i0 = blockIdx.x * kRows, iw = i0 + warp * 16, i = iw + r;
  const int last = min(T, i0 + kRows) - 1;
  const bool live = iw < T;  // uniform over the warp
  float* s = scores + warp * 16 * kSld;
  bf16* p = probs + warp * 16 * kPld;
  load_tile<HS>(qs, q, head.qkv_stride, i0, T);

  // Pass 1: max and sum of each row. Tiles start at multiples of 64 up to i0, so every row below
  // T sees the first key of every tile: the max is finite from the first tile on.
  float m = -INFINITY, l = 0.f;
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();  // the previous tile is consumed (and the queries are visible)
    load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
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
    load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
    load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);
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
  const Head head = head_of<HS>(T, C, NH);
  const float* q = qkv + head.qkv_offset;  // row t at q + t * 3C; k = q + C, v = q + 2C
  const int i0 = blockIdx.x * kRows, iw = i0 + warp * 16, i = iw + r;
  const int last = min(T, i0 + kRows) - 1;
  const bool live = iw < T;
  float* s = scores + warp * 16 * kSld;
  float* ds = dscores + warp * 16 * kSld;
  bf16* p = dprobs + warp * 16 * kPld;
  load_tile<HS>(qs, q, head.qkv_stride, i0, T);
  load_tile<HS>(gs, dout + head.row_offset, C, i0, T);
  row_terms<HS>(row_d + warp * 16, row_lse + warp * 16, dvec, dout, out, lse, head, iw, T, C, 1.f);

  FragC dq[HS / 16];
  zero<HS>(dq);
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();  // also makes row_d and row_lse visible
    load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
    load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);
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
  if (live) store_rows<HS>(dqkv + head.qkv_offset, head.qkv_stride, iw, T, dq, stage, scale);
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
  const Head head = head_of<HS>(T, C, NH);
  const float* q = qkv + head.qkv_offset;  // row t at q + t * 3C; k = q + C, v = q + 2C
  const int j0 = blockIdx.x * kRows, jw = j0 + warp * 16, j = jw + r;
  const bool live = jw < T;
  float* s = scores + warp * 16 * kSld;
  float* ds = dscores + warp * 16 * kSld;
  bf16* pt = probs + warp * 16 * kPld;
  bf16* dst = dprobs + warp * 16 * kPld;
  load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
  load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);

  FragC dk[HS / 16], dv[HS / 16];
  zero<HS>(dk);
  zero<HS>(dv);
  for (int t0 = j0; t0 < T; t0 += kRows) {  // queries before j0 see none of the block's keys
    __syncthreads();
    load_tile<HS>(qs, q, head.qkv_stride, t0, T);
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
    float* rows = dqkv + head.qkv_offset;
    store_rows<HS>(rows + C, head.qkv_stride, jw, T, dk, stage, scale);
    store_rows<HS>(rows + 2 * C, head.qkv_stride, jw, T, dv, stage, 1.f);
  }
}

// ---- The same three kernels on mma.sync (m16n8k16, bf16 operands, fp32 accumulation), the
// default tensor-core path. The roundings and the two-pass forward are those of the WMMA kernels
// above (and of cpu-bf16's reference), but the fragment layouts of mma.sync are documented (PTX
// ISA, "Matrix fragments for mma.m16n8k16"), so scores, probabilities and their gradients stay in
// registers: no fp32 score scratch in shared memory, no store and reload between the products.
// Of a warp's 16 x 8 accumulator tile, lane l holds rows g = l / 4 and g + 8, columns
// 2 (l % 4) and 2 (l % 4) + 1: c[0], c[1] on row g, c[2], c[3] on row g + 8. Two neighbouring
// accumulator tiles, rounded to bf16 and packed in pairs, are exactly the A fragment (16 x 16)
// of the next product, which is how P and dS feed P V, dS K, P^T dout and dS^T Q.
// Operands come from bf16 tiles in shared memory through ldmatrix: row-major A fragments as four
// 8 x 8 matrices, B fragments of "n-major" tiles (keys as rows, for S = Q K^T) as they are, and
// of "k-major" tiles (for P V) transposed by ldmatrix.trans.
namespace mma_sync {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared memory: bf16 tiles of (kRows, tile_ld<HS>()); the padding of 8 elements puts the eight
// 16-byte rows that one ldmatrix matrix reads in eight different bank groups.
template <int HS>
constexpr std::size_t forward_shared() {
  return 3 * tile_bytes<HS>();
}
template <int HS>
constexpr std::size_t backward_shared() {
  return 4 * tile_bytes<HS>() + 2 * kRows * sizeof(float);
}

__device__ inline std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8 x 8 bf16 matrices; lane l names row l % 8 of matrix l / 8, and r[m] receives matrix m:
// row l / 4, columns 2 (l % 4) and + 1 (with .trans, column l / 4, rows 2 (l % 4) and + 1).
__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}
__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

// d (16 x 8) += a (16 x 16) b (16 x 8); b given as its two registers.
__device__ inline void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                           std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to bf16 (to nearest even), the first in the low half: the element with the
// smaller column index, as fragments hold them.
__device__ inline std::uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  std::uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}

// tile[r, d] = src[(first + r) * stride + d] for the kRows rows from `first`; zero past T. The
// sources are bf16 copies of qkv and dout that the launchers round once per call (a tile is read
// by many blocks: half the bytes of fp32, and no conversion in the kernels); eight values (16
// bytes) a thread at a time: the copies start 256-byte aligned and every row offset is a multiple
// of 8 elements.
template <int HS>
__device__ inline void load_tile(bf16* tile, const bf16* src, std::size_t stride, int first,
                                 int T) {
  constexpr int kOcts = HS / 8;
  for (int idx = threadIdx.x; idx < kRows * kOcts; idx += kThreads) {
    const int r = idx / kOcts, d = idx % kOcts * 8, row = first + r;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (row < T) v = *reinterpret_cast<const uint4*>(src + std::size_t(row) * stride + d);
    *reinterpret_cast<uint4*>(tile + r * tile_ld<HS>() + d) = v;
  }
}

// s = a . b^T for a warp: a the 16 rows of the warp (16 x HS), b the 64 rows of a tile (64 x HS);
// s[n] is the accumulator tile of b's rows 8n..8n+7.
template <int HS>
__device__ inline void scores(float (&s)[8][4], const bf16* a, const bf16* b, int lane) {
  constexpr int LD = tile_ld<HS>();
#pragma unroll
  for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
  for (int k = 0; k < HS; k += 16) {
    std::uint32_t fa[4];  // rows 0-7 | 8-15 at column k, then the same at k + 8
    ldmatrix_x4(fa, a + (lane % 16) * LD + k + lane / 16 * 8);
#pragma unroll
    for (int n = 0; n < 8; n += 2) {
      std::uint32_t fb[4];  // b's rows 8n.. at k, at k + 8, rows 8n + 8.. at k, at k + 8
      ldmatrix_x4(fb, b + (n * 8 + lane / 16 * 8 + lane % 8) * LD + k + lane / 8 % 2 * 8);
      mma(s[n], fa, fb[0], fb[1]);
      mma(s[n + 1], fa, fb[2], fb[3]);
    }
  }
}

// The 16 x 64 values of s rounded to bf16 as the A fragments of four 16-column slices.
__device__ inline void to_fragments(std::uint32_t (&a)[4][4], const float (&s)[8][4]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    a[k][0] = pack(s[2 * k][0], s[2 * k][1]);          // row g, columns 0-7 of the slice
    a[k][1] = pack(s[2 * k][2], s[2 * k][3]);          // row g + 8, columns 0-7
    a[k][2] = pack(s[2 * k + 1][0], s[2 * k + 1][1]);  // row g, columns 8-15
    a[k][3] = pack(s[2 * k + 1][2], s[2 * k + 1][3]);  // row g + 8, columns 8-15
  }
}

// acc (16 x HS) += a (16 x 64, fragments) . m (the 64 x HS rows of a tile); acc[n] holds
// columns 8n..8n+7.
template <int HS>
__device__ inline void accumulate(float (&acc)[HS / 8][4], const std::uint32_t (&a)[4][4],
                                  const bf16* m, int lane) {
  constexpr int LD = tile_ld<HS>();
#pragma unroll
  for (int k = 0; k < 4; ++k) {
#pragma unroll
    for (int n = 0; n < HS / 8; n += 2) {
      std::uint32_t fb[4];  // rows 16k.. | 16k + 8.. at column 8n, then the same at 8n + 8
      ldmatrix_x4_trans(fb,
                        m + (k * 16 + lane / 8 % 2 * 8 + lane % 8) * LD + n * 8 + lane / 16 * 8);
      mma(acc[n], a[k], fb[0], fb[1]);
      mma(acc[n + 1], a[k], fb[2], fb[3]);
    }
  }
}

template <int HS>
__device__ inline void zero(float (&acc)[HS / 8][4]) {
#pragma unroll
  for (int n = 0; n < HS / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
}

// dst[(first + r) * stride + d] = factor * acc[r, d] for the warp's rows r below T (two floats a
// lane: each quad writes 32 contiguous bytes of a row).
template <int HS>
__device__ inline void store_rows(float* dst, std::size_t stride, int first, int T,
                                  const float (&acc)[HS / 8][4], float factor, int lane) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = first + lane / 4 + 8 * half;
    if (row >= T) continue;
    float* at = dst + std::size_t(row) * stride + lane % 4 * 2;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n)
      *reinterpret_cast<float2*>(at + n * 8) =
          make_float2(factor * acc[n][2 * half], factor * acc[n][2 * half + 1]);
  }
}

// The element of s[n][v] of a lane: its row (of the warp's 16) and column (of the tile's 64).
__device__ inline int row_of(int lane, int v) {
  return lane / 4 + (v / 2) * 8;
}
__device__ inline int column_of(int lane, int n, int v) {
  return n * 8 + lane % 4 * 2 + v % 2;
}

// f(n, v, valid) for each element s[n][v] of a lane, valid = whether the causal mask and T leave
// it in. Most tiles lie wholly below the diagonal and before T (`full`, uniform over the warp):
// there valid is the constant true and no index arithmetic runs.
template <class Valid, class F>
__device__ inline void for_each_element(bool full, Valid valid, F f) {
  if (full) {
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int v = 0; v < 4; ++v) f(n, v, true);
  } else {
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int v = 0; v < 4; ++v) f(n, v, valid(n, v));
  }
}

template <int HS>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(float* out, float* lse, const bf16* qkv, int T, int C, int NH, float scale) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);  // (64, LD) the block's queries
  bf16* ks = qs + kRows * LD;                // (64, LD) a key tile
  bf16* vs = ks + kRows * LD;                // (64, LD) its values
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Head head = head_of<HS>(T, C, NH);
  const bf16* q = qkv + head.qkv_offset;  // row t at q + t * 3C; k = q + C, v = q + 2C
  // The blocks with the most key tiles first: the last ones then fill the tail.
  const int i0 = (int(gridDim.x) - 1 - int(blockIdx.x)) * kRows, iw = i0 + warp * 16;
  const int last = min(T, i0 + kRows) - 1;
  const bool live = iw < T;         // uniform over the warp
  const float sl = scale * kLog2e;  // exp(scale s - x) = exp2(sl s - x log2 e)
  const bf16* qw = qs + warp * 16 * LD;
  load_tile<HS>(qs, q, head.qkv_stride, i0, T);

  // Pass 1: the max and sum of each of the lane's two rows (base 2), over all key tiles. Every
  // row below T sees key 0 in the first tile, so its max is finite from there on.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float s[8][4];
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();  // the previous tile is consumed (and the queries are in place)
    load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
    __syncthreads();
    if (!live) continue;
    scores<HS>(s, qw, ks, lane);
    float tile_max[2] = {-INFINITY, -INFINITY};
    const bool full = j0 < i0 && iw + 16 <= T;  // keys before the block's rows, rows before T
    const auto valid = [&](int n, int v) {
      const int i = iw + row_of(lane, v), j = j0 + column_of(lane, n, v);
      return i < T && j <= i;
    };
    for_each_element(full, valid, [&](int n, int v, bool ok) {
      s[n][v] = ok ? sl * s[n][v] : -INFINITY;
      tile_max[v / 2] = fmaxf(tile_max[v / 2], s[n][v]);
    });
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // the four lanes of a row: lanes 4g..4g+3
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullMask, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullMask, tile_max[h], 2));
      const float m_new = fmaxf(m[h], tile_max[h]);
      float sum = 0.f;
      if (m_new != -INFINITY) {  // -inf only on rows past T
#pragma unroll
        for (int n = 0; n < 8; ++n)
          sum += exp2f(s[n][2 * h] - m_new) + exp2f(s[n][2 * h + 1] - m_new);
      }
      sum += __shfl_xor_sync(kFullMask, sum, 1);
      sum += __shfl_xor_sync(kFullMask, sum, 2);
      l[h] = m_new == -INFINITY ? 0.f : l[h] * exp2f(m[h] - m_new) + sum;
      m[h] = m_new;
    }
  }
  float lse2[2];  // log2 of each row's sum of exp
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    lse2[h] = m[h] + log2f(l[h]);
    const int i = iw + lane / 4 + 8 * h;
    if (live && lse && lane % 4 == 0 && i < T) lse[head.lse_offset + i] = lse2[h] * kLn2;
  }

  // Pass 2: out = P V with P = exp(scale s - lse) rounded to bf16.
  float acc[HS / 8][4];
  zero<HS>(acc);
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();
    load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
    load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);
    __syncthreads();
    if (!live) continue;
    scores<HS>(s, qw, ks, lane);
    const bool full = j0 < i0 && iw + 16 <= T;
    const auto valid = [&](int n, int v) {
      const int i = iw + row_of(lane, v), j = j0 + column_of(lane, n, v);
      return i < T && j <= i;
    };
    for_each_element(full, valid, [&](int n, int v, bool ok) {
      s[n][v] = ok ? exp2f(sl * s[n][v] - lse2[v / 2]) : 0.f;
    });
    std::uint32_t p[4][4];
    to_fragments(p, s);
    accumulate<HS>(acc, p, vs, lane);
  }
  if (live) store_rows<HS>(out + head.row_offset, C, iw, T, acc, 1.f, lane);
}

// Query-major: dq of the block's rows (dS K), and D_i = dout_i . out_i for the key-major kernel.
template <int HS>
__global__ void __launch_bounds__(kThreads)
    backward_dq_kernel(float* dqkv, float* dvec, const float* dout, const bf16* dout16,
                       const bf16* qkv, const float* out, const float* lse, int T, int C, int NH,
                       float scale) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);                    // (64, LD) the block's queries
  bf16* gs = qs + kRows * LD;                                  // (64, LD) their dout rows
  bf16* ks = gs + kRows * LD;                                  // (64, LD) a key tile
  bf16* vs = ks + kRows * LD;                                  // (64, LD) its values
  float* row_lse = reinterpret_cast<float*>(vs + kRows * LD);  // (64) base 2
  float* row_d = row_lse + kRows;                              // (64)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Head head = head_of<HS>(T, C, NH);
  const bf16* q = qkv + head.qkv_offset;
  const int i0 = (int(gridDim.x) - 1 - int(blockIdx.x)) * kRows, iw = i0 + warp * 16;
  const int last = min(T, i0 + kRows) - 1;
  const bool live = iw < T;
  const float sl = scale * kLog2e;
  load_tile<HS>(qs, q, head.qkv_stride, i0, T);
  load_tile<HS>(gs, dout16 + head.row_offset, C, i0, T);
  row_terms<HS>(row_d + warp * 16, row_lse + warp * 16, dvec, dout, out, lse, head, iw, T, C,
                kLog2e);
  __syncwarp();
  float li[2], di[2];  // of the lane's rows g and g + 8
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    li[h] = row_lse[warp * 16 + lane / 4 + 8 * h];
    di[h] = row_d[warp * 16 + lane / 4 + 8 * h];
  }

  float dq[HS / 8][4];
  zero<HS>(dq);
  const bf16* qw = qs + warp * 16 * LD;
  const bf16* gw = gs + warp * 16 * LD;
  for (int j0 = 0; j0 <= last; j0 += kRows) {
    __syncthreads();  // the previous tiles are consumed (and the block's rows are in place)
    load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
    load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);
    __syncthreads();
    if (!live) continue;
    float s[8][4], dp[8][4];
    scores<HS>(s, qw, ks, lane);   // S
    scores<HS>(dp, gw, vs, lane);  // dP = dout V^T
    const bool full = j0 < i0 && iw + 16 <= T;
    const auto valid = [&](int n, int v) {
      const int i = iw + row_of(lane, v), j = j0 + column_of(lane, n, v);
      return i < T && j <= i;
    };
    for_each_element(full, valid, [&](int n, int v, bool ok) {
      s[n][v] = ok ? exp2f(sl * s[n][v] - li[v / 2]) * (dp[n][v] - di[v / 2]) : 0.f;
    });
    std::uint32_t ds[4][4];
    to_fragments(ds, s);
    accumulate<HS>(dq, ds, ks, lane);
  }
  if (live) store_rows<HS>(dqkv + head.qkv_offset, head.qkv_stride, iw, T, dq, scale, lane);
}

// Key-major: dk (dS^T Q) and dv (P^T dout) of the block's key rows, over the query tiles at or
// after them.
template <int HS>
__global__ void __launch_bounds__(kThreads)
    backward_dkdv_kernel(float* dqkv, const bf16* dout16, const bf16* qkv, const float* lse,
                         const float* dvec, int T, int C, int NH, float scale) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* ks = reinterpret_cast<bf16*>(smem);                     // (64, LD) the block's keys
  bf16* vs = ks + kRows * LD;                                   // (64, LD) their values
  bf16* qs = vs + kRows * LD;                                   // (64, LD) a query tile
  bf16* gs = qs + kRows * LD;                                   // (64, LD) its dout rows
  float* tile_lse = reinterpret_cast<float*>(gs + kRows * LD);  // (64) base 2
  float* tile_d = tile_lse + kRows;                             // (64)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Head head = head_of<HS>(T, C, NH);
  const bf16* q = qkv + head.qkv_offset;
  const int j0 = blockIdx.x * kRows, jw = j0 + warp * 16;  // the first blocks have the most work
  const bool live = jw < T;
  const float sl = scale * kLog2e;
  load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
  load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);

  float dk[HS / 8][4], dv[HS / 8][4];
  zero<HS>(dk);
  zero<HS>(dv);
  const bf16* kw = ks + warp * 16 * LD;
  const bf16* vw = vs + warp * 16 * LD;
  for (int t0 = j0; t0 < T; t0 += kRows) {  // queries before j0 see none of the block's keys
    __syncthreads();
    load_tile<HS>(qs, q, head.qkv_stride, t0, T);
    load_tile<HS>(gs, dout16 + head.row_offset, C, t0, T);
    if (threadIdx.x < kRows) {
      const int row = t0 + threadIdx.x;
      tile_lse[threadIdx.x] = row < T ? lse[head.lse_offset + row] * kLog2e : 0.f;
      tile_d[threadIdx.x] = row < T ? dvec[head.lse_offset + row] : 0.f;
    }
    __syncthreads();
    if (!live) continue;
    float s[8][4], dp[8][4];
    scores<HS>(s, kw, qs, lane);   // S^T: the warp's keys x the tile's queries
    scores<HS>(dp, vw, gs, lane);  // dP^T = V dout^T
    // queries after the block's keys, before T (keys past T then see none of them)
    const bool full = t0 > j0 && t0 + kRows <= T;
    const auto valid = [&](int n, int v) {
      const int i = t0 + column_of(lane, n, v), j = jw + row_of(lane, v);
      return i < T && i >= j;
    };
    for_each_element(full, valid, [&](int n, int v, bool ok) {
      const int col = column_of(lane, n, v);
      const float p = ok ? exp2f(sl * s[n][v] - tile_lse[col]) : 0.f;
      s[n][v] = p;
      dp[n][v] = p * (dp[n][v] - tile_d[col]);
    });
    std::uint32_t pt[4][4], dst[4][4];
    to_fragments(pt, s);
    to_fragments(dst, dp);
    accumulate<HS>(dv, pt, gs, lane);
    accumulate<HS>(dk, dst, qs, lane);
  }
  if (live) {
    float* rows = dqkv + head.qkv_offset;
    store_rows<HS>(rows + C, head.qkv_stride, jw, T, dk, scale, lane);
    store_rows<HS>(rows + 2 * C, head.qkv_stride, jw, T, dv, 1.f, lane);
  }
}

}  // namespace mma_sync

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

bool attention_tc_supported(int C, int NH, std::size_t max_shared, TcAttention kernels) {
  if (NH <= 0 || C <= 0 || C % NH != 0) return false;
  const int HS = C / NH;
  if (HS % 16 != 0 || HS < 16 || HS > 128) return false;
  std::size_t needed = 0;
  with_head_size(HS, [&](auto hs) {
    constexpr int H = decltype(hs)::value;
    needed =
        kernels == TcAttention::mma
            ? std::max(mma_sync::forward_shared<H>(), mma_sync::backward_shared<H>())
            : std::max({forward_shared<H>(), backward_dq_shared<H>(), backward_dkdv_shared<H>()});
  });
  return needed <= max_shared;
}

std::size_t max_shared_per_block(int device) {
  int bytes = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return std::size_t(bytes);
}

namespace {

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// The bf16 qkv that the mma.sync kernels read: a bf16 one as it is, an fp32 one rounded into the
// workspace.
const bf16* bf16_qkv(TensorIn qkv, std::size_t n, Workspace& ws, cudaStream_t stream) {
  if (qkv.type == DType::bf16) return static_cast<const bf16*>(qkv.data);
  bf16* copy = ws.take<bf16>(n);
  to_bf16(copy, static_cast<const float*>(qkv.data), n, stream);
  return copy;
}

// The fp32 qkv that the WMMA kernels read.
const float* fp32_qkv(const char* op, TensorIn qkv) {
  CUDA_REQUIRE(qkv.type == DType::fp32, op,
               std::string("a bf16 qkv, which only the mma.sync kernels read"));
  return static_cast<const float*>(qkv.data);
}

}  // namespace

std::size_t attention_tc_workspace(TcAttention kernels, bool backward, DType qkv, int B, int T,
                                   int C, int NH) {
  const std::size_t rows = std::size_t(B) * T;
  std::size_t bytes = backward ? Workspace::aligned(std::size_t(B) * NH * T * sizeof(float)) : 0;
  if (kernels == TcAttention::mma) {  // the bf16 copies of an fp32 qkv and of dout
    if (qkv == DType::fp32) bytes += Workspace::aligned(rows * 3 * C * sizeof(__nv_bfloat16));
    if (backward) bytes += Workspace::aligned(rows * C * sizeof(__nv_bfloat16));
  }
  return bytes;
}

void attention_forward_tc(float* out, float* lse, TensorIn qkv, int B, int T, int C, int NH,
                          TcAttention kernels, Workspace ws, cudaStream_t stream) {
  const char* op = "attention_forward (tensor cores)";
  const Plan plan = check_and_plan(op, B, T, C, NH);
  with_head_size(plan.HS, [&](auto hs) {
    constexpr int HS = decltype(hs)::value;
    if (kernels == TcAttention::mma) {
      // float2 stores (the model's tensors start at multiples of 64 bytes, cudaMalloc's of 256)
      CUDA_REQUIRE(aligned16(out), op, std::string("out not 16-byte aligned"));
      const bf16* qkv16 = bf16_qkv(qkv, std::size_t(B) * T * 3 * C, ws, stream);
      auto* kernel = mma_sync::forward_kernel<HS>;
      constexpr std::size_t shared = mma_sync::forward_shared<HS>();
      allow_dynamic_shared(kernel, shared);
      kernel<<<plan.grid, kThreads, shared, stream>>>(out, lse, qkv16, T, C, NH, plan.scale);
      CUDA_CHECK_LAUNCH(mma_sync::forward_kernel);
      return;
    }
    auto* kernel = attention_forward_tc_kernel<HS>;
    allow_dynamic_shared(kernel, forward_shared<HS>());
    kernel<<<plan.grid, kThreads, forward_shared<HS>(), stream>>>(out, lse, fp32_qkv(op, qkv), T, C,
                                                                  NH, plan.scale);
    CUDA_CHECK_LAUNCH(attention_forward_tc_kernel);
  });
}

void attention_backward_tc(float* dqkv, const float* dout, TensorIn qkv, const float* out,
                           const float* lse, int B, int T, int C, int NH, TcAttention kernels,
                           Workspace ws, cudaStream_t stream) {
  const char* op = "attention_backward (tensor cores)";
  const Plan plan = check_and_plan(op, B, T, C, NH);
  CUDA_REQUIRE(lse != nullptr, op, std::string("no log-sum-exp saved by attention_forward"));
  float* dvec = ws.take<float>(std::size_t(B) * NH * T);  // (B, NH, T)
  with_head_size(plan.HS, [&](auto hs) {
    constexpr int HS = decltype(hs)::value;
    if (kernels == TcAttention::mma) {
      CUDA_REQUIRE(aligned16(dqkv), op, std::string("dqkv not 16-byte aligned"));
      const std::size_t rows = std::size_t(B) * T;
      const bf16* qkv16 = bf16_qkv(qkv, rows * 3 * C, ws, stream);
      bf16* dout16 = ws.take<bf16>(rows * C);
      to_bf16(dout16, dout, rows * C, stream);
      constexpr std::size_t shared = mma_sync::backward_shared<HS>();
      auto* dq_kernel = mma_sync::backward_dq_kernel<HS>;
      allow_dynamic_shared(dq_kernel, shared);
      dq_kernel<<<plan.grid, kThreads, shared, stream>>>(dqkv, dvec, dout, dout16, qkv16, out, lse,
                                                         T, C, NH, plan.scale);
      CUDA_CHECK_LAUNCH(mma_sync::backward_dq_kernel);
      auto* dkdv_kernel = mma_sync::backward_dkdv_kernel<HS>;
      allow_dynamic_shared(dkdv_kernel, shared);
      dkdv_kernel<<<plan.grid, kThreads, shared, stream>>>(dqkv, dout16, qkv16, lse, dvec, T, C, NH,
                                                           plan.scale);
      CUDA_CHECK_LAUNCH(mma_sync::backward_dkdv_kernel);
      return;
    }
    auto* dq_kernel = attention_backward_dq_tc_kernel<HS>;
    allow_dynamic_shared(dq_kernel, backward_dq_shared<HS>());
    const float* q32 = fp32_qkv(op, qkv);
    dq_kernel<<<plan.grid, kThreads, backward_dq_shared<HS>(), stream>>>(dqkv, dvec, dout, q32, out,
                                                                         lse, T, C, NH, plan.scale);
    CUDA_CHECK_LAUNCH(attention_backward_dq_tc_kernel);
    auto* dkdv_kernel = attention_backward_dkdv_tc_kernel<HS>;
    allow_dynamic_shared(dkdv_kernel, backward_dkdv_shared<HS>());
    dkdv_kernel<<<plan.grid, kThreads, backward_dkdv_shared<HS>(), stream>>>(
        dqkv, dout, q32, lse, dvec, T, C, NH, plan.scale);
    CUDA_CHECK_LAUNCH(attention_backward_dkdv_tc_kernel);
  });
}

}  // namespace mixsim::cuda
