// Fused causal self-attention, flash style, in fp32 on CUDA cores. A block takes kBlockRows = 32
// consecutive rows of one (batch, head), kRows = 4 consecutive rows per warp, and walks the other
// side in tiles of 32 rows held in shared memory, one row per lane. Each value a lane reads from
// shared memory feeds the warp's kRows rows, and each lane keeps NPL = ceil(HS / 32) head dims of
// each row in registers (d = lane + 32 r): the kernels are templated on NPL. Nothing of size
// T x T is ever stored:
// - forward: per query row an online softmax (running max and sum) over key tiles; the output
//   and the log-sum-exp of the row (the backward pass's only saved state) are written at the end.
// - backward: probabilities are recomputed from the log-sum-exp. With P = softmax(scale q k^T),
//   D_i = dout_i . out_i and dS = P (dout v^T - D): dq = scale dS k, dk = scale dS^T q,
//   dv = P^T dout. Two kernels, so that every output row is summed by one warp in a fixed order
//   (no atomics): a query-major one for dq (which also stores D), a key-major one for dk, dv.
// Rows past T in a tile are loaded as zeros, and a warp skips (uniformly) every row of its own
// that is past T or sees no key of the tile, so no lane multiplies garbage or forms exp(-inf+inf).
#include <cmath>
#include <type_traits>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRows = 4;                         // rows of a warp
constexpr int kBlockRows = kWarps * kRows;       // rows of a block
constexpr int kTile = kWarpSize;                 // rows of a shared tile, one per lane
constexpr int kThreads = kWarps * kWarpSize;
static_assert(kBlockRows == kTile, "the key-major kernel starts its query tiles at its block");

// An odd row stride: lane l reading element d of tile row l hits bank (l * ld + d) % 32, all
// different when ld is odd.
__host__ __device__ inline int tile_ld(int HS) {
  return HS % 2 ? HS : HS + 1;
}

// Shared memory of every kernel here: two tiles, two blocks of the block's own rows, two
// per-tile vectors.
std::size_t shared_bytes(int HS) {
  return sizeof(float) *
         (2 * std::size_t(kTile) * tile_ld(HS) + 2 * std::size_t(kBlockRows) * HS + 2 * kTile);
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

// The block's own kBlockRows rows from `first` into rows[r * HS + d]; zero past T.
__device__ inline void load_rows(float* rows, const float* src, std::size_t stride, int first,
                                 int T, int HS) {
  for (int idx = threadIdx.x; idx < kBlockRows * HS; idx += blockDim.x) {
    const int r = idx / HS, d = idx % HS, row = first + r;
    rows[idx] = row < T ? src[std::size_t(row) * stride + d] : 0.f;
  }
}

// dots[r] = own[r] . tile row `lane`, for the warp's kRows rows (own: its first row in shared
// memory, read as broadcasts; each tile value is read once for all kRows rows).
__device__ inline void dot_rows(float (&dots)[kRows], const float* own, const float* tile, int HS) {
  const float* t = tile + (threadIdx.x % kWarpSize) * tile_ld(HS);
#pragma unroll
  for (int r = 0; r < kRows; ++r) dots[r] = 0.f;
  for (int d = 0; d < HS; ++d) {
    const float td = t[d];
#pragma unroll
    for (int r = 0; r < kRows; ++r) dots[r] += own[r * HS + d] * td;
  }
}

// acc[r][c] += sum over tile rows jj of w[r] (held by lane jj) * tile[jj, lane + 32 c].
template <int NPL>
__device__ inline void add_weighted_rows(float (&acc)[kRows][NPL], const float (&w)[kRows],
                                         const float* tile, int HS) {
  const int lane = threadIdx.x % kWarpSize, ld = tile_ld(HS);
  for (int jj = 0; jj < kTile; ++jj) {
    const float* row = tile + jj * ld;
    float x[NPL];
#pragma unroll
    for (int c = 0; c < NPL; ++c) {
      const int d = lane + kWarpSize * c;
      x[c] = d < HS ? row[d] : 0.f;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float wj = __shfl_sync(kFullMask, w[r], jj);
#pragma unroll
      for (int c = 0; c < NPL; ++c) acc[r][c] += wj * x[c];
    }
  }
}

template <int NPL>
__device__ inline void store_row(float* dst, const float (&acc)[NPL], float factor, int HS) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int c = 0; c < NPL; ++c) {
    const int d = lane + kWarpSize * c;
    if (d < HS) dst[d] = acc[c] * factor;
  }
}

template <int NPL>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(float* out, float* lse, const float* qkv, int T, int C, int NH, int HS,
                             float scale) {
  extern __shared__ float smem[];
  const int ld = tile_ld(HS), warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* ks = smem;                           // (kTile, ld) keys
  float* vs = ks + kTile * ld;                // (kTile, ld) values
  float* qs = vs + kTile * ld;                // (kBlockRows, HS) the block's queries
  const float* q = qs + warp * kRows * HS;    // the warp's kRows query rows
  const Head head = head_of(qkv, T, C, NH, HS);
  const int i0 = blockIdx.x * kBlockRows, iw = i0 + warp * kRows;  // block's, warp's first row
  const int last = min(T, i0 + kBlockRows) - 1;                    // the block's last query row
  load_rows(qs, head.q, head.qkv_stride, i0, T, HS);

  float m[kRows], l[kRows], acc[kRows][NPL];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < NPL; ++c) acc[r][c] = 0.f;
  }
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();  // the previous tiles are consumed (and the queries are visible)
    load_tile(ks, head.q + C, head.qkv_stride, j0, T, HS);
    load_tile(vs, head.q + 2 * C, head.qkv_stride, j0, T, HS);
    __syncthreads();
    if (iw >= T || j0 > iw + kRows - 1) continue;  // the whole warp: no row sees this tile
    float s[kRows], p[kRows];
    dot_rows(s, q, ks, HS);
    const int j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = iw + r;
      p[r] = 0.f;
      if (i >= T || j0 > i) continue;  // uniform over the warp: row r sees no key of the tile
      const float sr = j <= i ? scale * s[r] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(sr));  // finite: key j0 <= i is visible
      const float correction = expf(m[r] - m_new);    // 0 on the row's first tile (m = -inf)
      p[r] = expf(sr - m_new);                         // 0 for masked keys
      l[r] = l[r] * correction + warp_sum(p[r]);
#pragma unroll
      for (int c = 0; c < NPL; ++c) acc[r][c] *= correction;
      m[r] = m_new;
    }
    add_weighted_rows<NPL>(acc, p, vs, HS);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = iw + r;
    if (i >= T) break;
    store_row<NPL>(out + head.row_offset + std::size_t(i) * C, acc[r], 1.f / l[r], HS);
    if (lse && lane == 0) lse[head.lse_offset + i] = m[r] + logf(l[r]);
  }
}

// Query-major: dq of the block's query rows, and D_i = dout_i . out_i for the key-major kernel.
template <int NPL>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(float* dqkv, float* dvec, const float* dout, const float* qkv,
                                 const float* out, const float* lse, int T, int C, int NH, int HS,
                                 float scale) {
  extern __shared__ float smem[];
  const int ld = tile_ld(HS), warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* ks = smem;                         // (kTile, ld) keys
  float* vs = ks + kTile * ld;              // (kTile, ld) values
  float* qs = vs + kTile * ld;              // (kBlockRows, HS) the block's queries
  float* gs = qs + kBlockRows * HS;         // (kBlockRows, HS) their dout rows
  const Head head = head_of(qkv, T, C, NH, HS);
  const int i0 = blockIdx.x * kBlockRows, iw = i0 + warp * kRows;
  const int last = min(T, i0 + kBlockRows) - 1;
  load_rows(qs, head.q, head.qkv_stride, i0, T, HS);
  load_rows(gs, dout + head.row_offset, C, i0, T, HS);
  const float* q = qs + warp * kRows * HS;
  const float* g = gs + warp * kRows * HS;
  float D[kRows], row_lse[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = iw + r;
    D[r] = row_lse[r] = 0.f;
    if (i >= T) continue;
    const std::size_t row = head.row_offset + std::size_t(i) * C;
    float part = 0.f;
    for (int d = lane; d < HS; d += kWarpSize) part += dout[row + d] * out[row + d];
    D[r] = warp_sum(part);
    if (lane == 0) dvec[head.lse_offset + i] = D[r];
    row_lse[r] = lse[head.lse_offset + i];
  }

  float dq[kRows][NPL] = {};
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();
    load_tile(ks, head.q + C, head.qkv_stride, j0, T, HS);
    load_tile(vs, head.q + 2 * C, head.qkv_stride, j0, T, HS);
    __syncthreads();
    if (iw >= T || j0 > iw + kRows - 1) continue;
    float s[kRows], dp[kRows], ds[kRows];
    dot_rows(s, q, ks, HS);
    dot_rows(dp, g, vs, HS);
    const int j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = iw + r;
      ds[r] = 0.f;
      if (i < T && j <= i) ds[r] = expf(scale * s[r] - row_lse[r]) * (dp[r] - D[r]);
    }
    add_weighted_rows<NPL>(dq, ds, ks, HS);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = iw + r;
    if (i >= T) break;
    const std::size_t q_row = std::size_t(blockIdx.z) * T + i;
    store_row<NPL>(dqkv + q_row * head.qkv_stride + std::size_t(blockIdx.y) * HS, dq[r], scale,
                   HS);
  }
}

// Key-major: dk and dv of the block's key rows, over the query tiles at or after them.
template <int NPL>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(float* dqkv, const float* dout, const float* qkv,
                                   const float* lse, const float* dvec, int T, int C, int NH,
                                   int HS, float scale) {
  extern __shared__ float smem[];
  const int ld = tile_ld(HS), warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* qs = smem;                           // (kTile, ld) queries
  float* gs = qs + kTile * ld;                // (kTile, ld) dout rows
  float* ks = gs + kTile * ld;                // (kBlockRows, HS) the block's keys
  float* vs = ks + kBlockRows * HS;           // (kBlockRows, HS) the block's values
  float* tile_lse = vs + kBlockRows * HS;     // (kTile)
  float* tile_d = tile_lse + kTile;           // (kTile)
  const Head head = head_of(qkv, T, C, NH, HS);
  const int j0 = blockIdx.x * kBlockRows, jw = j0 + warp * kRows;
  load_rows(ks, head.q + C, head.qkv_stride, j0, T, HS);
  load_rows(vs, head.q + 2 * C, head.qkv_stride, j0, T, HS);
  const float* k = ks + warp * kRows * HS;
  const float* v = vs + warp * kRows * HS;

  float dk[kRows][NPL] = {}, dv[kRows][NPL] = {};
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
    if (jw >= T) continue;  // the whole warp: no key row of its own (t0 + 31 >= jw always)
    float s[kRows], dp[kRows], p[kRows], ds[kRows];
    dot_rows(s, k, qs, HS);
    dot_rows(dp, v, gs, HS);
    const int i = t0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int j = jw + r;
      p[r] = ds[r] = 0.f;
      if (j < T && i >= j && i < T) {
        p[r] = expf(scale * s[r] - tile_lse[lane]);
        ds[r] = p[r] * (dp[r] - tile_d[lane]);
      }
    }
    add_weighted_rows<NPL>(dv, p, gs, HS);
    add_weighted_rows<NPL>(dk, ds, qs, HS);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int j = jw + r;
    if (j >= T) break;
    float* row =
        dqkv + (std::size_t(blockIdx.z) * T + j) * head.qkv_stride + std::size_t(blockIdx.y) * HS;
    store_row<NPL>(row + C, dk[r], scale, HS);
    store_row<NPL>(row + 2 * C, dv[r], 1.f, HS);
  }
}

struct Launch {
  dim3 grid;
  std::size_t shared;
  float scale;
  int HS;
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
  return {dim3(CEIL_DIV(T, kBlockRows), NH, B), shared_bytes(HS), scale, HS};
}

// Calls fn(std::integral_constant<int, NPL>) for the head size's dims per lane (1..4).
template <class Fn>
void with_dims_per_lane(int HS, Fn&& fn) {
  static_assert(kMaxHeadSize == 4 * kWarpSize, "one case per dims-per-lane count");
  switch (CEIL_DIV(HS, kWarpSize)) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    default: fn(std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream) {
  const Launch l = check_and_plan("attention_forward", B, T, C, NH);
  with_dims_per_lane(l.HS, [&](auto npl) {
    auto* kernel = attention_forward_kernel<decltype(npl)::value>;
    allow_dynamic_shared(kernel, l.shared);
    kernel<<<l.grid, kThreads, l.shared, stream>>>(out, lse, qkv, T, C, NH, l.HS, l.scale);
    CUDA_CHECK_LAUNCH(attention_forward_kernel);
  });
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
  with_dims_per_lane(l.HS, [&](auto npl) {
    constexpr int NPL = decltype(npl)::value;
    auto* dq_kernel = attention_backward_dq_kernel<NPL>;
    allow_dynamic_shared(dq_kernel, l.shared);
    dq_kernel<<<l.grid, kThreads, l.shared, stream>>>(dqkv, dvec, dout, qkv, out, lse, T, C, NH,
                                                      l.HS, l.scale);
    CUDA_CHECK_LAUNCH(attention_backward_dq_kernel);
    auto* dkdv_kernel = attention_backward_dkdv_kernel<NPL>;
    allow_dynamic_shared(dkdv_kernel, l.shared);
    dkdv_kernel<<<l.grid, kThreads, l.shared, stream>>>(dqkv, dout, qkv, lse, dvec, T, C, NH,
                                                        l.HS, l.scale);
    CUDA_CHECK_LAUNCH(attention_backward_dkdv_kernel);
  });
}

}  // namespace mixsim::cuda
