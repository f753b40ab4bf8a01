// Fused causal self-attention on bf16 tensor cores, for the cuda-bf16 backend; head sizes 16..128
// in steps of 16 (attention.cu serves the others and the fp32 backend). The launchers round qkv
// (unless it is stored in bf16 already) and dout to bf16 once per call; the kernels copy tiles of
// those into shared memory.
//
// mma.sync (m16n8k16, bf16 operands, fp32 accumulation): the fragment layouts are documented (PTX
// ISA, "Matrix fragments for mma.m16n8k16"), so scores, probabilities and their gradients stay in
// registers. Of a warp's 16 x 8 accumulator tile, lane l holds rows g = l / 4 and g + 8, columns
// 2 (l % 4) and 2 (l % 4) + 1: c[0], c[1] on row g, c[2], c[3] on row g + 8. Two neighbouring
// accumulator tiles, rounded to bf16 and packed in pairs, are exactly the A fragment (16 x 16) of
// the next product, which is how P and dS feed P V, dS K, P^T dout and dS^T Q. Operands come from
// the bf16 tiles through ldmatrix: row-major A fragments as four 8 x 8 matrices, B fragments of
// "n-major" tiles (keys as rows, for S = Q K^T) as they are, and of "k-major" tiles (for P V)
// transposed by ldmatrix.trans. (A WMMA version, which had to stage every score tile through
// shared memory, ran at 0.42x of this one on an H200 and was removed.)
//
// A block takes kRows = 64 rows of one (batch, head), 16 per warp, and walks the other side in
// tiles of 64 rows, in two shared-memory stages: while the warps work on one tile, cp.async
// copies the next into the other stage (one barrier per tile; two with the fused dq). (The forward
// can take 128 rows, two
// groups of 16 a warp: forward_kernel<HS, 2>, MIXSIM_TC_WIDE_FORWARD=1.)
// - forward: one pass over the key tiles (flash attention): a running max m and sum l per row,
//   P = exp(scale s - m) rounded to bf16 and accumulated as P V, the sums rescaled by
//   exp(m_old - m_new) when the max grows, and out = (P V) / l at the end. Nothing of size T x T
//   is stored; lse per row is saved. These are the roundings of cpu-bf16's reference
//   (src/backend/cpu/attention_bf16.cpp, which walks the keys in the same tiles).
// - backward, as attention.cu: a query-major kernel for dq (dS K; also stores D = dout . out) and a
//   key-major kernel for dk (dS^T Q) and dv (P^T dout), so that every output row is summed by one
//   warp in a fixed order: deterministic, no atomics. Both recompute the normalised
//   P = exp(scale s - lse). (MIXSIM_ATTENTION_FUSED_DQ=1: the key-major kernel alone, dq summed in
//   a fixed order through semaphores between blocks, whose grid places come from an atomic ticket
//   counter: still deterministic, no float atomics; below, at backward_dkdv_kernel.)
// Rows past T are loaded as zeros and masked; a warp whose rows all lie past T skips the products
// (uniformly) but still takes part in the block's barriers. scripts/gpu/mma_emulator runs the
// kernels' index arithmetic lane by lane in numpy.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kRows = 64;  // rows of a block, and of a tile of the other side
constexpr int kWarps = 4;  // 16 rows each
constexpr int kThreads = kWarps * kWarpSize;
static_assert(kWarps * 16 == kRows, "a warp owns 16 rows of the block");

// Leading dimension of a bf16 tile of head-size rows: a multiple of 8 elements (16-byte rows for
// ldmatrix), and the +8 puts the eight rows that one ldmatrix matrix reads in eight different
// bank groups.
template <int HS>
__host__ __device__ constexpr int tile_ld() {
  return HS + 8;
}

template <int HS>
constexpr std::size_t tile_bytes() {
  return std::size_t(kRows) * tile_ld<HS>() * sizeof(bf16);
}

// Where the rows of one (batch, head) live.
struct Head {
  std::size_t qkv_stride;  // 3C
  std::size_t qkv_offset;  // (b, t, h) of the q part of a (B,T,3C) tensor: + t * 3C (k: + C,
                           // v: + 2C)
  std::size_t row_offset;  // (b, t, h) of a (B,T,C) tensor: row_offset + t * C
  std::size_t lse_offset;  // (b, h, t) of a (B,NH,T) tensor: lse_offset + t
};

// The (row block, head, batch element) a block takes, and the count of row blocks. By default the
// grid is (row blocks, NH, B): blocks start in launch order, x fastest, so the blocks of one head
// run together, and the last heads' long blocks start late and run on after the rest have
// finished. With heavy_first (MIXSIM_ATTENTION_HEAVY_FIRST=1, uniform) the launcher makes the grid
// (NH, B, row blocks): the row block varies slowest, so every head's longest block starts before
// any shorter one. `block` counts row blocks in launch order; the kernels turn it into rows (the
// forward and dq kernels take the last rows first, dkdv the first keys: the longest blocks first
// either way). Each block computes what the same (row block, head, b) computes in the other
// grid, so the results are bit-identical; only the order the blocks start in changes.
struct Place {
  int block, h, b, blocks;
};
__device__ inline Place place_at(uint3 idx, bool heavy_first) {
  if (heavy_first) return {int(idx.z), int(idx.x), int(idx.y), int(gridDim.z)};
  return {int(idx.x), int(idx.y), int(idx.z), int(gridDim.x)};
}
__device__ inline Place place_of(bool heavy_first) {
  return place_at(blockIdx, heavy_first);
}

template <int HS>
__device__ inline Head head_of(const Place& place, int T, int C, int NH) {
  const std::size_t b = place.b, h = place.h, stride = 3 * std::size_t(C);
  return {stride, b * T * stride + h * HS, b * T * C + h * HS, (b * NH + h) * T};
}

namespace mma_sync {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared memory: bf16 tiles of (kRows, tile_ld<HS>()); the padding of 8 elements puts the eight
// 16-byte rows that one ldmatrix matrix reads in eight different bank groups. The tiles of the
// other side come in two stages (kStages): the next tile is copied (cp.async) while the warps
// work on this one.
constexpr int kStages = 2;
template <int HS, int G = 1>
constexpr std::size_t forward_shared() {  // the queries (G tiles); keys and values per stage
  return (G + 2 * kStages) * tile_bytes<HS>();
}
// The fused dq (MIXSIM_ATTENTION_FUSED_DQ) stages the tile's dS^T in bf16, (64 keys, kDsLd).
constexpr int kDsLd = kRows + 8;  // as tile_ld: 16-byte rows, eight rows in eight bank groups
template <int HS, bool kFusedDq = false>
constexpr std::size_t
backward_shared() {  // the block's two tiles; two tiles and two rows per stage; dS^T (fused dq)
  return (2 + 2 * kStages) * tile_bytes<HS>() + 2 * kStages * kRows * sizeof(float) +
         (kFusedDq ? std::size_t(kRows) * kDsLd * sizeof(bf16) : 0);
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

// Asynchronous copies from global to shared memory (cp.async, sm_80 on): `bytes` of `src` (16 or
// 4) to `dst`, or zeros when !valid (a source size of 0 reads nothing; src must still be a
// global address). A thread's copies so far form a group at commit_copies(); wait_copies() waits
// for all of the thread's groups, after which a __syncthreads() makes every thread's copies
// visible to the block.
__device__ inline void copy_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :
               : "r"(shared_address(dst)), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ inline void copy_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
               :
               : "r"(shared_address(dst)), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
}
__device__ inline void commit_copies() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ inline void wait_copies() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Starts tile[r, d] = src[(first + r) * stride + d] for the kRows rows from `first`; zero past T.
// The sources are bf16 copies of qkv and dout that the launchers round once per call (a tile is
// read by many blocks: half the bytes of fp32, and no conversion in the kernels); eight values
// (16 bytes) a copy: the copies start 256-byte aligned and every row offset is a multiple of 8
// elements. Where a row is a power of two of those pieces (head sizes 16, 32, 64, 128), each
// thread copies the same piece of every kThreads / kOcts-th row, a count of copies known when
// compiling, so that the loop unrolls and each copy's row and column (and its place in shared
// memory) are worked out once, outside the kernels' loops over tiles: the loop over idx below,
// with signed division, cost ~25 instructions a copy, a third of the forward's instructions per
// tile (PTX of forward_kernel<64, 1>, 2026-11-27). At the other head sizes the unrolled form
// kept more per-copy values than the registers hold (ptxas: spills at 80 and 112), so they keep
// the loop.
template <int HS>
__device__ inline void load_tile(bf16* tile, const bf16* src, std::size_t stride, int first,
                                 int T) {
  constexpr int kOcts = HS / 8;          // 16-byte pieces of a row
  const auto copy = [&](int r, int d) {  // the piece at column d of the tile's row r
    const int row = first + r;
    const bool valid = row < T;
    copy_async16(tile + r * tile_ld<HS>() + d, src + (valid ? std::size_t(row) * stride + d : 0),
                 valid);
  };
  if constexpr ((kOcts & (kOcts - 1)) == 0) {
    constexpr unsigned kRowStep = kThreads / kOcts;
    const unsigned r0 = threadIdx.x / kOcts, d = threadIdx.x % kOcts * 8;
#pragma unroll
    for (unsigned c = 0; c < kRows / kRowStep; ++c) copy(int(r0 + c * kRowStep), int(d));
  } else {
    for (int idx = threadIdx.x; idx < kRows * kOcts; idx += kThreads)
      copy(idx / kOcts, idx % kOcts * 8);
  }
}
// Starts dst[r] = src[first + r] for the kRows rows from `first`; zero past T.
__device__ inline void load_rows(float* dst, const float* src, int first, int T) {
  if (threadIdx.x < kRows) {
    const int row = first + threadIdx.x;
    const bool valid = row < T;
    copy_async4(dst + threadIdx.x, src + (valid ? row : 0), valid);
  }
}

// Stage t % kStages of a double-buffered region whose stages are `per_stage` elements apart.
template <class T>
__device__ inline T* stage_of(T* base, int t, int per_stage) {
  return base + (t % kStages) * per_stage;
}

// Starts key tile t (of the head whose q rows start at q) and its values into their stage of kv:
// per stage, (64, LD) keys and then (64, LD) values. The forward and dq kernels' next tile.
template <int HS>
__device__ inline void load_kv_stage(bf16* kv, const bf16* q, const Head& head, int C, int t,
                                     int T) {
  constexpr int LD = tile_ld<HS>();
  bf16* ks = stage_of(kv, t, 2 * kRows * LD);
  load_tile<HS>(ks, q + C, head.qkv_stride, t * kRows, T);
  load_tile<HS>(ks + kRows * LD, q + 2 * C, head.qkv_stride, t * kRows, T);
}

// The top of iteration t of a kernel's loop over `tiles` tiles, whose tile 0 (and the block's
// own tiles) were started and committed before the loop: tile t's copies have landed and are
// visible to the whole block, every warp is done with tile t - 1, and so load(t + 1) starts the
// next tile into that stage, behind the work on tile t. One barrier per tile.
template <class Load>
__device__ inline void advance(int t, int tiles, Load&& load) {
  wait_copies();
  __syncthreads();
  if (t + 1 < tiles) load(t + 1);
  commit_copies();
}

// s[g] = a_g . b^T for a warp's G groups of 16 rows that are on: a_g the 16 rows from a + g kRows
// rows (16 x HS), b the 64 rows of a tile (64 x HS); s[g][n] is the accumulator tile of b's rows
// 8n..8n+7. Each b fragment is loaded once for all the groups.
template <int HS, int G>
__device__ inline void scores(float (&s)[G][8][4], const bf16* a, const bool (&on)[G],
                              const bf16* b, int lane) {
  constexpr int LD = tile_ld<HS>();
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int n = 0; n < 8; ++n) s[g][n][0] = s[g][n][1] = s[g][n][2] = s[g][n][3] = 0.f;
#pragma unroll
  for (int k = 0; k < HS; k += 16) {
    std::uint32_t fa[G][4];  // rows 0-7 | 8-15 at column k, then the same at k + 8
#pragma unroll
    for (int g = 0; g < G; ++g)
      if (on[g]) ldmatrix_x4(fa[g], a + (g * kRows + lane % 16) * LD + k + lane / 16 * 8);
#pragma unroll
    for (int n = 0; n < 8; n += 2) {
      std::uint32_t fb[4];  // b's rows 8n.. at k, at k + 8, rows 8n + 8.. at k, at k + 8
      ldmatrix_x4(fb, b + (n * 8 + lane / 16 * 8 + lane % 8) * LD + k + lane / 8 % 2 * 8);
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (on[g]) {
          mma(s[g][n], fa[g], fb[0], fb[1]);
          mma(s[g][n + 1], fa[g], fb[2], fb[3]);
        }
    }
  }
}

// s = a . b^T for one group: a the 16 rows of the warp.
template <int HS>
__device__ inline void scores(float (&s)[8][4], const bf16* a, const bf16* b, int lane) {
  const bool on[1] = {true};
  scores<HS, 1>(reinterpret_cast<float(&)[1][8][4]>(s), a, on, b, lane);
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

// acc[g] (16 x HS) += a[g] (16 x 64, fragments) . m (the 64 x HS rows of a tile) for a warp's
// G groups that are on; acc[g][n] holds columns 8n..8n+7. Each m fragment is loaded once for all
// the groups.
template <int HS, int G>
__device__ inline void accumulate(float (&acc)[G][HS / 8][4], const std::uint32_t (&a)[G][4][4],
                                  const bool (&on)[G], const bf16* m, int lane) {
  constexpr int LD = tile_ld<HS>();
#pragma unroll
  for (int k = 0; k < 4; ++k) {
#pragma unroll
    for (int n = 0; n < HS / 8; n += 2) {
      std::uint32_t fb[4];  // rows 16k.. | 16k + 8.. at column 8n, then the same at 8n + 8
      ldmatrix_x4_trans(fb,
                        m + (k * 16 + lane / 8 % 2 * 8 + lane % 8) * LD + n * 8 + lane / 16 * 8);
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (on[g]) {
          mma(acc[g][n], a[g][k], fb[0], fb[1]);
          mma(acc[g][n + 1], a[g][k], fb[2], fb[3]);
        }
    }
  }
}

// acc += a . m for one group.
template <int HS>
__device__ inline void accumulate(float (&acc)[HS / 8][4], const std::uint32_t (&a)[4][4],
                                  const bf16* m, int lane) {
  const bool on[1] = {true};
  accumulate<HS, 1>(reinterpret_cast<float(&)[1][HS / 8][4]>(acc),
                    reinterpret_cast<const std::uint32_t(&)[1][4][4]>(a), on, m, lane);
}

template <int HS>
__device__ inline void zero(float (&acc)[HS / 8][4]) {
#pragma unroll
  for (int n = 0; n < HS / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
}

// dst[(first + r) * stride + d] = factor[h] * acc[r, d] for the warp's rows r below T, h = 0 for
// the lane's row g and 1 for g + 8 (two values a lane: each quad writes 32 contiguous bytes of an
// fp32 row, 16 of a bf16 one, rounded to nearest even).
template <int HS, class Out>
__device__ inline void store_rows(Out* dst, std::size_t stride, int first, int T,
                                  const float (&acc)[HS / 8][4], const float (&factor)[2],
                                  int lane) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = first + lane / 4 + 8 * half;
    if (row >= T) continue;
    Out* at = dst + std::size_t(row) * stride + lane % 4 * 2;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n) {
      const float lo = factor[half] * acc[n][2 * half], hi = factor[half] * acc[n][2 * half + 1];
      if constexpr (std::is_same_v<Out, float>)
        *reinterpret_cast<float2*>(at + n * 8) = make_float2(lo, hi);
      else
        *reinterpret_cast<__nv_bfloat162*>(at + n * 8) = __floats2bfloat162_rn(lo, hi);
    }
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

// The lane's part of D = dout . out for the head's row at `at` (fp32 dout, or where it is stored
// in bf16 null and read from dout16; out fp32 or bf16 as stored): every 32nd element from the
// lane's, in order; warp_sum adds the parts.
template <int HS>
__device__ inline float row_dot_part(const float* dout, const bf16* dout16, const void* out,
                                     bool out_bf16, std::size_t at, int lane) {
  float part = 0.f;
  for (int d = lane; d < HS; d += kWarpSize)
    part += (dout ? dout[at + d] : load(dout16 + at + d)) *
            (out_bf16 ? load(static_cast<const bf16*>(out) + at + d)
                      : load(static_cast<const float*>(out) + at + d));
  return part;
}

// Of the warp's 16 rows from iw: D = dout . out in fp32 (summed as attention.cu does; out fp32 or
// bf16 as stored, out_bf16 uniform; dout fp32, or where it is stored in bf16 null and read from
// dout16) into row_d[0..15] and dvec, and lse in base 2 into row_lse[0..15] (0 past T).
template <int HS>
__device__ inline void row_terms(float* row_d, float* row_lse, float* dvec, const float* dout,
                                 const bf16* dout16, const void* out, bool out_bf16,
                                 const float* lse, const Head& head, int iw, int T, int C) {
  const int lane = threadIdx.x % kWarpSize;
  for (int rr = 0; rr < 16; ++rr) {
    const int row = iw + rr;
    const std::size_t at = head.row_offset + std::size_t(row) * C;
    float part = row < T ? row_dot_part<HS>(dout, dout16, out, out_bf16, at, lane) : 0.f;
    part = warp_sum(part);
    if (lane == 0) {
      row_d[rr] = part;
      row_lse[rr] = row < T ? lse[head.lse_offset + row] * kLog2e : 0.f;
      if (row < T) dvec[head.lse_offset + row] = part;
    }
  }
}

// One key tile (keys from j0) of the forward pass for a warp's 16 rows from iw, whose scores are
// in s: masks and scales them (base 2), updates the running max m and sum l of the lane's two
// rows, rescales acc, and leaves P = exp(scale s - m) (unrounded) in s. `full`: every element is
// valid (keys before the rows' 64-row group, rows before T).
template <int HS>
__device__ inline void online_softmax_tile(float (&s)[8][4], float (&m)[2], float (&l)[2],
                                           float (&acc)[HS / 8][4], bool full, int iw, int j0,
                                           int T, float sl, int lane) {
  float tile_max[2] = {-INFINITY, -INFINITY};
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
    const float base = m_new == -INFINITY ? 0.f : m_new;  // -inf only on rows past T
    const float rescale = exp2f(m[h] - base);             // 0 on the first tile
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      s[n][2 * h] = exp2f(s[n][2 * h] - base);
      s[n][2 * h + 1] = exp2f(s[n][2 * h + 1] - base);
      sum += s[n][2 * h] + s[n][2 * h + 1];
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    sum += __shfl_xor_sync(kFullMask, sum, 2);
    l[h] = l[h] * rescale + sum;
    m[h] = m_new;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n) {
      acc[n][2 * h] *= rescale;
      acc[n][2 * h + 1] *= rescale;
    }
  }
}

// The end of the forward pass for a warp's 16 rows from iw (below T): lse, and out = acc / l.
template <int HS>
__device__ inline void finish_rows(void* out, bool out_bf16, float* lse, const Head& head, int iw,
                                   int T, int C, const float (&m)[2], const float (&l)[2],
                                   const float (&acc)[HS / 8][4], int lane) {
  float inv[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    inv[h] = 1.f / l[h];
    const int i = iw + lane / 4 + 8 * h;
    if (lse && lane % 4 == 0 && i < T) lse[head.lse_offset + i] = (m[h] + log2f(l[h])) * kLn2;
  }
  if (out_bf16)
    store_rows<HS>(static_cast<bf16*>(out) + head.row_offset, C, iw, T, acc, inv, lane);
  else
    store_rows<HS>(static_cast<float*>(out) + head.row_offset, C, iw, T, acc, inv, lane);
}

// row_terms into the warp's 16 rows of row_d and row_lse, then each lane's li and di: the base-2
// lse and D of its rows g and g + 8 (the dq kernels').
template <int HS>
__device__ inline void lane_row_terms(float (&li)[2], float (&di)[2], float* row_d, float* row_lse,
                                      float* dvec, const float* dout, const bf16* dout16,
                                      const void* out, bool out_bf16, const float* lse,
                                      const Head& head, int iw, int T, int C) {
  const int lane = threadIdx.x % kWarpSize;
  row_terms<HS>(row_d, row_lse, dvec, dout, dout16, out, out_bf16, lse, head, iw, T, C);
  __syncwarp();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    li[h] = row_lse[lane / 4 + 8 * h];
    di[h] = row_d[lane / 4 + 8 * h];
  }
}

// dS = P (dP - D) into s, for a query-major tile (keys from j0) of the warp's 16 rows from iw:
// P = exp(scale s - lse) where the causal mask and T leave the element in, 0 elsewhere; li and di
// the base-2 lse and the D of the lane's rows; `full` as for online_softmax_tile.
__device__ inline void query_major_ds(float (&s)[8][4], const float (&dp)[8][4], bool full, int iw,
                                      int j0, int T, float sl, const float (&li)[2],
                                      const float (&di)[2], int lane) {
  const auto valid = [&](int n, int v) {
    const int i = iw + row_of(lane, v), j = j0 + column_of(lane, n, v);
    return i < T && j <= i;
  };
  for_each_element(full, valid, [&](int n, int v, bool ok) {
    s[n][v] = ok ? exp2f(sl * s[n][v] - li[v / 2]) * (dp[n][v] - di[v / 2]) : 0.f;
  });
}

// P^T into s and dS^T = P^T (dP^T - D) into dp, for a key-major tile (queries from t0) of the
// warp's 16 keys from jw: tile_lse (natural log) and tile_d of the tile's 64 queries; `full`:
// every query after the keys and before T.
__device__ inline void key_major_p_ds(float (&s)[8][4], float (&dp)[8][4], bool full, int jw,
                                      int t0, int T, float sl, const float* tile_lse,
                                      const float* tile_d, int lane) {
  const auto valid = [&](int n, int v) {
    const int i = t0 + column_of(lane, n, v), j = jw + row_of(lane, v);
    return i < T && i >= j;
  };
  for_each_element(full, valid, [&](int n, int v, bool ok) {
    const int col = column_of(lane, n, v);
    // (lse log2 e rounded on its own, never fused into the subtraction: the dq kernel's li)
    const float p = ok ? exp2f(sl * s[n][v] - __fmul_rn(tile_lse[col], kLog2e)) : 0.f;
    s[n][v] = p;
    dp[n][v] = p * (dp[n][v] - tile_d[col]);
  });
}

// The forward pass: a block takes G * 64 rows of one (batch, head), each warp G groups of 16,
// rows 16 w.. of each 64 (G = 1: forward_kernel as it has run since 2026-11-27). Every b fragment a
// warp loads from shared memory feeds the products of all its groups (scores and accumulate), so
// G = 2 (MIXSIM_TC_WIDE_FORWARD=1, head sizes up to 64; written without a GPU at hand) halves the
// ldmatrix reads per product and gives each warp two independent chains of products, at about
// 220 registers a thread instead of 128 (ptxas, sm_90, HS 64). A group skips the key tiles after
// its rows (with G = 2 the last tile, for the first group: uniform over the warp), which a block
// of G = 1 holding those rows never loads: each row gets the same tiles and arithmetic in the same
// order whatever G, so out and lse are bit-identical (WideForwardIsBitIdentical).
//
// One pass over the key tiles (flash attention): the running max m and sum l of each of the lane's
// rows (base 2), and out = sum over tiles of P V with P = exp(scale s - m) rounded to bf16,
// rescaled by exp(m_old - m_new) when the max grows; out / l at the end. Every row below T sees
// key 0 in the first tile, so its max is finite from there on.
// Blocks an SM asked of ptxas, as many as the registers of forward_kernel before it took G allowed
// (left to ptxas, the template spilled a little at HS 48 and took more registers above 64): one
// group four up to HS 80 and three above (where shared memory allows three at most), two groups
// two.
template <int HS, int G>
__global__ void __launch_bounds__(kThreads, G == 2 ? 2 : (HS <= 80 ? 4 : 3))
    forward_kernel(void* out, bool out_bf16, float* lse, const bf16* qkv, int T, int C, int NH,
                   float scale, bool heavy_first) {
  static_assert(G == 1 || HS <= 64, "two groups of accumulators fit the registers up to HS 64");
  constexpr int LD = tile_ld<HS>();
  constexpr int kBlockRows = G * kRows;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);  // (G * 64, LD) the block's queries
  bf16* kv = qs + kBlockRows * LD;  // per stage: (64, LD) a key tile, then (64, LD) its values
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Place place = place_of(heavy_first);
  const Head head = head_of<HS>(place, T, C, NH);
  const bf16* q = qkv + head.qkv_offset;  // row t at q + t * 3C; k = q + C, v = q + 2C
  // The blocks with the most key tiles first: the last ones then fill the tail.
  const int i0 = (place.blocks - 1 - place.block) * kBlockRows;
  const int tiles = (min(T, i0 + kBlockRows) - 1) / kRows + 1;  // key tiles up to the last row
  int iw[G];     // the first row of each of the warp's groups
  bool live[G];  // uniform over the warp
#pragma unroll
  for (int g = 0; g < G; ++g) {
    iw[g] = i0 + g * kRows + warp * 16;
    live[g] = iw[g] < T;
  }
  const float sl = scale * kLog2e;       // exp(scale s - x) = exp2(sl s - x log2 e)
  const bf16* qw = qs + warp * 16 * LD;  // group g's rows from qw + g * 64 rows
  const auto load_stage = [&](int t) { load_kv_stage<HS>(kv, q, head, C, t, T); };
#pragma unroll
  for (int g = 0; g < G; ++g)
    load_tile<HS>(qs + g * kRows * LD, q, head.qkv_stride, i0 + g * kRows, T);
  load_stage(0);
  commit_copies();

  float m[G][2], l[G][2];
  float acc[G][HS / 8][4];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g][0] = m[g][1] = -INFINITY;
    l[g][0] = l[g][1] = 0.f;
    zero<HS>(acc[g]);
  }
  for (int t = 0; t < tiles; ++t) {
    advance(t, tiles, load_stage);
    const int j0 = t * kRows;
    bool on[G];  // the group has rows below T that see keys of this tile
    bool any = false;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      on[g] = live[g] && j0 <= iw[g] + 15;
      any = any || on[g];
    }
    if (!any) continue;
    const bf16* ks = stage_of(kv, t, 2 * kRows * LD);
    float s[G][8][4];
    scores<HS, G>(s, qw, on, ks, lane);
    std::uint32_t p[G][4][4];
#pragma unroll
    for (int g = 0; g < G; ++g)
      if (on[g]) {
        // full: keys before the group's 64 rows, rows before T
        online_softmax_tile<HS>(s[g], m[g], l[g], acc[g], j0 < i0 + g * kRows && iw[g] + 16 <= T,
                                iw[g], j0, T, sl, lane);
        to_fragments(p[g], s[g]);
      }
    accumulate<HS, G>(acc, p, on, ks + kRows * LD, lane);
  }
#pragma unroll
  for (int g = 0; g < G; ++g)
    if (live[g]) finish_rows<HS>(out, out_bf16, lse, head, iw[g], T, C, m[g], l[g], acc[g], lane);
}

// Query-major: dq of the block's rows (dS K), and D_i = dout_i . out_i for the key-major kernel.
// dqkv is fp32 or bf16 (rounded as it is stored); dout null where only the bf16 dout16 is stored.
template <int HS, class Out>
__global__ void __launch_bounds__(kThreads)
    backward_dq_kernel(Out* dqkv, float* dvec, const float* dout, const bf16* dout16,
                       const bf16* qkv, const void* out, bool out_bf16, const float* lse, int T,
                       int C, int NH, float scale, bool heavy_first) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);  // (64, LD) the block's queries
  bf16* gs = qs + kRows * LD;                // (64, LD) their dout rows
  bf16* kv = gs + kRows * LD;                // per stage: (64, LD) a key tile, (64, LD) its values
  float* row_lse = reinterpret_cast<float*>(kv + kStages * 2 * kRows * LD);  // (64) base 2
  float* row_d = row_lse + kRows;                                            // (64)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Place place = place_of(heavy_first);
  const Head head = head_of<HS>(place, T, C, NH);
  const bf16* q = qkv + head.qkv_offset;
  const int i0 = (place.blocks - 1 - place.block) * kRows, iw = i0 + warp * 16;
  const int tiles = (min(T, i0 + kRows) - 1) / kRows + 1;
  const bool live = iw < T;
  const float sl = scale * kLog2e;
  const auto load_stage = [&](int t) { load_kv_stage<HS>(kv, q, head, C, t, T); };
  load_tile<HS>(qs, q, head.qkv_stride, i0, T);
  load_tile<HS>(gs, dout16 + head.row_offset, C, i0, T);
  load_stage(0);
  commit_copies();
  float li[2], di[2];  // of the lane's rows g and g + 8
  lane_row_terms<HS>(li, di, row_d + warp * 16, row_lse + warp * 16, dvec, dout, dout16, out,
                     out_bf16, lse, head, iw, T, C);

  float dq[HS / 8][4];
  zero<HS>(dq);
  const bf16* qw = qs + warp * 16 * LD;
  const bf16* gw = gs + warp * 16 * LD;
  for (int t = 0; t < tiles; ++t) {
    advance(t, tiles, load_stage);
    if (!live) continue;
    const bf16* ks = stage_of(kv, t, 2 * kRows * LD);
    const bf16* vs = ks + kRows * LD;
    const int j0 = t * kRows;
    float s[8][4], dp[8][4];
    scores<HS>(s, qw, ks, lane);   // S
    scores<HS>(dp, gw, vs, lane);  // dP = dout V^T
    query_major_ds(s, dp, j0 < i0 && iw + 16 <= T, iw, j0, T, sl, li, di, lane);
    std::uint32_t ds[4][4];
    to_fragments(ds, s);
    accumulate<HS>(dq, ds, ks, lane);
  }
  if (live)
    store_rows<HS>(dqkv + head.qkv_offset, head.qkv_stride, iw, T, dq, {scale, scale}, lane);
}

// D_i = dout_i . out_i for the fused dq's key-major kernel (the dq kernel's row_terms otherwise):
// one warp a row of a head, summed as row_terms sums it. dvec (B, NH, T); rows = B NH T.
template <int HS>
__global__ void row_dots_kernel(float* dvec, const float* dout, const bf16* dout16, const void* out,
                                bool out_bf16, int T, int C, int NH, std::size_t rows) {
  const std::size_t r = (std::size_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (r >= rows) return;  // uniform over the warp
  const std::size_t t = r % T, bh = r / T, b = bh / NH, h = bh % NH;
  const std::size_t at = b * T * C + h * HS + t * C;
  const float part = warp_sum(row_dot_part<HS>(dout, dout16, out, out_bf16, at, lane));
  if (lane == 0) dvec[r] = part;
}

// The fused dq's shared state: acc (B, NH, T, HS) fp32, each head's dq summed so far; sem
// (B, NH, query tiles), how many key blocks have added to each query tile; and tickets, the count
// of blocks that have started (sem and tickets zero at launch).
struct FusedDq {
  float* acc;
  int* sem;
  int* tickets;
};

// The grid position a fused dq block takes: the next ticket, in launch order (x fastest). A block
// waits only for blocks before it in launch order; with positions handed out as blocks start,
// those have all started, whatever order the hardware starts blocks in, so they are running or
// done and the wait ends (blockIdx itself would rely on blocks starting in launch order).
__device__ inline uint3 ticket_position(int* tickets) {
  __shared__ int ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(tickets, 1);
  __syncthreads();
  const unsigned t = unsigned(ticket);
  return {t % gridDim.x, t / gridDim.x % gridDim.y, t / (gridDim.x * gridDim.y)};
}

// A semaphore between blocks (the pattern of a serial split-K reduction): a block that has
// stored its part of a query tile's dq lets the next one in with a release store after a
// barrier and a fence; the next one's thread 0 waits with acquire loads, then a barrier, and
// its threads read the stored sums from L2 (__ldcg: another block's stores are not in this
// SM's L1). A wait bounded in time: should a block ever wait on one that cannot run (a bug), the
// kernel stops with an error (a trap) instead of hanging.
__device__ inline int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ inline void store_release(int* p, int v) {
  asm volatile("st.release.gpu.global.s32 [%0], %1;\n" : : "l"(p), "r"(v) : "memory");
}
__device__ inline unsigned long long global_ns() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  return ns;
}
constexpr unsigned long long kWaitLimitNs = 20'000'000'000ull;  // 20 s: far past any tile
__device__ inline void wait_for(const int* sem, int value) {
  const unsigned long long start = global_ns();
  while (load_acquire(sem) != value) {
    // (signed: a timer that steps back reads as no time passed, never as a wrapped huge one)
    if (static_cast<long long>(global_ns() - start) > static_cast<long long>(kWaitLimitNs))
      __trap();
    __nanosleep(100);
  }
}

// The fused dq's part of a tile (fused dq only): the warp's 16 queries from iw (below T), whose
// dq partial part = dS K over the block's 64 keys: acc[q] += part, in key-block order (the
// block's `first`: nothing stored before it; its `last`: the query tile's own key block, which
// stores dq = scale acc into dqkv instead).
template <int HS, class Out>
__device__ inline void add_dq_part(Out* dqkv, const Head& head, const FusedDq& fused, int iw, int T,
                                   float (&part)[HS / 8][4], bool first, bool last, float scale,
                                   int lane) {
  float* acc = fused.acc + head.lse_offset * HS;  // row t at acc + t HS
  // the lane's pair of columns 8n.. of its row `row` in acc
  const auto pair = [&](int row, int n) {
    return reinterpret_cast<float2*>(acc + std::size_t(row) * HS + n * 8 + lane % 4 * 2);
  };
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = iw + lane / 4 + 8 * half;
    if (row >= T || first) continue;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n) {
      const float2 prev = __ldcg(pair(row, n));
      part[n][2 * half] += prev.x;
      part[n][2 * half + 1] += prev.y;
    }
  }
  if (last) {
    store_rows<HS>(dqkv + head.qkv_offset, head.qkv_stride, iw, T, part, {scale, scale}, lane);
    return;
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = iw + lane / 4 + 8 * half;
    if (row >= T) continue;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n)
      __stcg(pair(row, n), make_float2(part[n][2 * half], part[n][2 * half + 1]));
  }
}

// Key-major: dk (dS^T Q) and dv (P^T dout) of the block's key rows, over the query tiles at or
// after them. Compiled for three blocks per SM at head sizes up to 64 (168 registers a thread,
// no spills; an H100's or H200's shared memory holds three there too, an A100's two), else for
// what its registers allow.
//
// kFusedDq (MIXSIM_ATTENTION_FUSED_DQ=1; an opt-in written without a GPU at hand): the kernel
// computes dq too, and the dq kernel does not run (row_dots_kernel gives D). Each tile's dS^T
// goes to shared memory, and each warp then takes 16 of the tile's queries: its part dS K over
// the block's 64 keys, added in fp32 to the query tile's sum in `fused.acc` in key-block order
// (block 0 first), so that dq is the same on every run without float atomics. The sum's order
// is held by a semaphore per query tile: key block b waits until blocks 0..b-1 have added
// theirs. A block takes its grid position from a ticket as it starts (ticket_position), so block
// b - 1 has started before block b whatever order the hardware starts them in. So that a block
// does not wait long on the one before it, each block walks its query tiles from the last to its
// own (the other kernels' order is from its own): block b then asks for each tile just after
// block b - 1 has done the same tile in the same step of its walk. The query tile's own key block
// adds last, and stores dq = scale sum into dqkv. dk and dv are summed over the query tiles in that
// reverse order.
template <int HS, class Out, bool kFusedDq = false>
__global__ void __launch_bounds__(kThreads, HS <= 64 ? 3 : 1)
    backward_dkdv_kernel(Out* dqkv, const bf16* dout16, const bf16* qkv, const float* lse,
                         const float* dvec, FusedDq fused, int T, int C, int NH, float scale,
                         bool heavy_first) {
  constexpr int LD = tile_ld<HS>();
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* ks = reinterpret_cast<bf16*>(smem);  // (64, LD) the block's keys
  bf16* vs = ks + kRows * LD;                // (64, LD) their values
  bf16* qg = vs + kRows * LD;                // per stage: (64, LD) a query tile, (64, LD) its dout
  float* rows = reinterpret_cast<float*>(qg + kStages * 2 * kRows * LD);  // per stage: (64) lse,
                                                                          // (64) D of the queries
  bf16* dss = reinterpret_cast<bf16*>(rows + 2 * kStages * kRows);  // (64, kDsLd) dS^T, fused dq
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Place place =
      kFusedDq ? place_at(ticket_position(fused.tickets), heavy_first) : place_of(heavy_first);
  const Head head = head_of<HS>(place, T, C, NH);
  const bf16* q = qkv + head.qkv_offset;
  const int j0 = place.block * kRows, jw = j0 + warp * 16;  // the first blocks have the most work
  const int tiles = CEIL_DIV(T - j0, kRows);  // queries before j0 see none of the block's keys
  const bool live = jw < T;
  const float sl = scale * kLog2e;
  // the first query of the walk's t-th tile: from j0 up, or (fused dq) from the last tile down
  const auto tile_start = [&](int t) { return j0 + (kFusedDq ? tiles - 1 - t : t) * kRows; };
  // the head's semaphores from fused.sem (an int: B NH blocks < 2^31, checked by the launcher)
  const int sem_base = (place.b * NH + place.h) * place.blocks;
  const auto load_stage = [&](int t) {  // query tile t of the walk, its dout, lse and D
    const int t0 = tile_start(t);
    bf16* qt = stage_of(qg, t, 2 * kRows * LD);
    float* rt = stage_of(rows, t, 2 * kRows);
    load_tile<HS>(qt, q, head.qkv_stride, t0, T);
    load_tile<HS>(qt + kRows * LD, dout16 + head.row_offset, C, t0, T);
    load_rows(rt, lse + head.lse_offset, t0, T);
    load_rows(rt + kRows, dvec + head.lse_offset, t0, T);
  };
  load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
  load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);
  load_stage(0);
  commit_copies();

  float dk[HS / 8][4], dv[HS / 8][4];
  zero<HS>(dk);
  zero<HS>(dv);
  const bf16* kw = ks + warp * 16 * LD;
  const bf16* vw = vs + warp * 16 * LD;
  std::uint32_t* ds_rows = reinterpret_cast<std::uint32_t*>(dss + warp * 16 * kDsLd);
  if constexpr (kFusedDq)
    if (!live)  // keys past T: their dS rows are zeros (written once; no live warp writes them)
      for (int e = lane; e < 16 * kRows / 2; e += kWarpSize)
        ds_rows[e / (kRows / 2) * (kDsLd / 2) + e % (kRows / 2)] = 0u;
  for (int t = 0; t < tiles; ++t) {
    advance(t, tiles, load_stage);
    const int t0 = tile_start(t);
    if constexpr (kFusedDq)  // every warp's part of the previous tile is stored (the barrier)
      if (t > 0 && threadIdx.x == 0) {
        __threadfence();
        store_release(fused.sem + sem_base + tile_start(t - 1) / kRows, place.block + 1);
      }
    if (live) {
      const bf16* qs = stage_of(qg, t, 2 * kRows * LD);
      const bf16* gs = qs + kRows * LD;
      const float* tile_lse = stage_of(rows, t, 2 * kRows);  // natural log
      const float* tile_d = tile_lse + kRows;
      float s[8][4], dp[8][4];
      scores<HS>(s, kw, qs, lane);   // S^T: the warp's keys x the tile's queries
      scores<HS>(dp, vw, gs, lane);  // dP^T = V dout^T
      // full: queries after the block's keys, before T (keys past T then see none of them)
      key_major_p_ds(s, dp, t0 > j0 && t0 + kRows <= T, jw, t0, T, sl, tile_lse, tile_d, lane);
      std::uint32_t pt[4][4], dst[4][4];
      to_fragments(pt, s);
      to_fragments(dst, dp);
      accumulate<HS>(dv, pt, gs, lane);
      accumulate<HS>(dk, dst, qs, lane);
      if constexpr (kFusedDq)  // dS^T's fragments as stored: rows g, g + 8; columns 16k + 2 (l % 4)
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
          for (int r = 0; r < 4; ++r)
            ds_rows[(lane / 4 + r % 2 * 8) * (kDsLd / 2) + 8 * k + r / 2 * 4 + lane % 4] =
                dst[k][r];
    }
    if constexpr (kFusedDq) {
      const int tile = t0 / kRows;  // the query tile's index in the head
      if (place.block > 0 && threadIdx.x == 0) wait_for(fused.sem + sem_base + tile, place.block);
      __syncthreads();                // dS^T in shared memory; the keys' earlier parts of dq stored
      const int iw = t0 + warp * 16;  // the warp's 16 queries
      if (iw < T) {
        std::uint32_t a[4][4];  // dS (queries x keys) by ldmatrix.trans of dS^T: A fragments
#pragma unroll
        for (int k = 0; k < 4; ++k)
          ldmatrix_x4_trans(a[k], dss + (k * 16 + lane / 16 * 8 + lane % 8) * kDsLd + warp * 16 +
                                      lane / 8 % 2 * 8);
        float part[HS / 8][4];
        zero<HS>(part);
        accumulate<HS>(part, a, ks, lane);  // dS K
        add_dq_part<HS>(dqkv, head, fused, iw, T, part, place.block == 0, tile == place.block,
                        scale, lane);
      }
    }
  }
  if (live) {
    Out* out_rows = dqkv + head.qkv_offset;
    store_rows<HS>(out_rows + C, head.qkv_stride, jw, T, dk, {scale, scale}, lane);
    store_rows<HS>(out_rows + 2 * C, head.qkv_stride, jw, T, dv, {1.f, 1.f}, lane);
  }
}

}  // namespace mma_sync

// ---- The forward on Hopper's warpgroup products (MIXSIM_ATTENTION_WGMMA=1; sm_90a, head sizes 64
// and 128; written without a GPU at hand). A block's four warps are one warpgroup, and its 64 rows
// are one wgmma M of 64: S = Q K^T is four (HS 64) or eight (HS 128) wgmma.m64n64k16 reading Q
// and the key tile from shared memory through descriptors, and P V is wgmma.m64n64k16 with P's A
// fragments from registers (the same fragments as mma_sync's to_fragments) and the value tile
// from shared memory, once or twice per 16 keys (each 64 columns of HS). No ldmatrix: the
// products read shared memory themselves, so a warp issues 8 (HS 64) instructions per tile where
// mma_sync issues 64 mma and 36 ldmatrix. Each warp's accumulator rows are those of mma.m16n8
// tiles (wgmma's D fragment: warp w holds rows 16w..16w+15, d[4n + v] the c[v] of columns
// 8n..8n+7), so the mask, the online softmax and the stores are mma_sync's, and so are the
// roundings (P to bf16; the sums' order within one product is the hardware's in both).
//
// Shared memory, 1024-byte aligned: tiles of 64 rows as columns of 128-byte "atoms" (64
// elements), the 16-byte piece c of row r at (c / 8) 8192 + 128 r + 16 ((c % 8) ^ (r % 8)): the
// 128-byte swizzle, which wgmma applies to the address bits (bits 4-6 XOR bits 7-9) and which
// also keeps the copies free of bank conflicts. Descriptors (PTX ISA, "Matrix Descriptor Format";
// the canonical layouts as CUTLASS's make_gmma_desc states them): Q and the keys "K-major" (the
// reduced dimension HS contiguous), eight-row groups 1024 bytes apart (SBO), a k-step of 16 at
// +32 bytes within an atom; the values "MN-major" (HS contiguous, the reduced keys as rows,
// transposed: imm-trans-b 1), eight-key groups 1024 apart (SBO), a k-step of 16 keys at +2048.
// The copies are cp.async (the generic proxy); each thread fences them to the async proxy
// (fence.proxy.async) after its wait and before the barrier that publishes the tile.
namespace wgmma {

constexpr std::uint32_t kAtomBytes = kRows * 128;  // a tile's 64 rows of one 128-byte atom
template <int HS>
__host__ __device__ constexpr std::uint32_t tile_bytes() {
  return (HS / 64) * kAtomBytes;
}
template <int HS>
constexpr std::size_t forward_shared() {  // Q, and keys and values per stage; 1024 to align
  return (1 + 2 * mma_sync::kStages) * tile_bytes<HS>() + 1024;
}

#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)

// The byte of piece c (16 bytes, elements 8c..8c+7) of row r in a swizzled tile.
__device__ inline std::uint32_t swizzled(int r, int c) {
  return std::uint32_t((c / 8) * kAtomBytes + r * 128 + (((c % 8) ^ (r % 8)) << 4));
}

// Starts the tile at shared address `tile`: row r = src[(first + r) * stride ..] for the kRows
// rows from `first`, zero past T (as mma_sync::load_tile, into the swizzled layout).
template <int HS>
__device__ inline void load_tile(std::uint32_t tile, const bf16* src, std::size_t stride, int first,
                                 int T) {
  constexpr int kPieces = HS / 8;
  constexpr int kRowStep = kThreads / kPieces;
  const int r0 = int(threadIdx.x) / kPieces, c = int(threadIdx.x) % kPieces;
#pragma unroll
  for (int i = 0; i < kRows / kRowStep; ++i) {
    const int r = r0 + i * kRowStep, row = first + r;
    const bool valid = row < T;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(tile + swizzled(r, c)),
                   "l"(src + (valid ? std::size_t(row) * stride + c * 8 : 0)), "r"(valid ? 16 : 0)
                 : "memory");
  }
}

// A shared-memory matrix descriptor with the 128-byte swizzle; byte offsets as multiples of 16.
// lbo: K-major, unused (16, CUTLASS's "assumed 1"); MN-major, the step to the next 64-column
// atom (a tile's 64 rows further), which an n64 product never takes.
__device__ inline std::uint64_t descriptor(std::uint32_t address, std::uint32_t lbo,
                                           std::uint32_t sbo) {
  return std::uint64_t((address & 0x3FFFF) >> 4) | std::uint64_t(lbo >> 4) << 16 |
         std::uint64_t(sbo >> 4) << 32 | std::uint64_t(1) << 62;
}

__device__ inline void fence_async_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ inline void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ inline void commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ inline void wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Keeps the compiler from moving the registers' other uses (the accumulators', and the A
// fragments' packing) across the products' issue and wait.
template <int N>
__device__ inline void fence_registers(float (&r)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int v = 0; v < 4; ++v) asm volatile("" : "+f"(r[n][v])::"memory");
}
__device__ inline void fence_registers(std::uint32_t (&r)[4][4]) {
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int v = 0; v < 4; ++v) asm volatile("" : "+r"(r[n][v])::"memory");
}

#define MIXSIM_WGMMA_D32                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define MIXSIM_WGMMA_OUT32(d)                                                                   \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),     \
      "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
      "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), \
      "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
      "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), \
      "+f"(d[7][2]), "+f"(d[7][3])

// d (64 x 64 over the warpgroup; the warp's 16 rows as 8 accumulator tiles) = (add ? d : 0) +
// a b^T: a (64 x 16) and b (64 x 16), both K-major, from descriptors.
__device__ inline void product_ss(float (&d)[8][4], std::uint64_t a, std::uint64_t b, int add) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " MIXSIM_WGMMA_D32
      ", %32, %33, p, 1, 1, 0, 0;\n}\n"
      : MIXSIM_WGMMA_OUT32(d)
      : "l"(a), "l"(b), "r"(add));
}
// d (64 x 64) += a b: a (64 x 16) as the warp's A fragment registers, b (16 x 64) MN-major from a
// descriptor (transposed).
__device__ inline void product_rs(float (&d)[8][4], const std::uint32_t (&a)[4], std::uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " MIXSIM_WGMMA_D32
      ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : MIXSIM_WGMMA_OUT32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
#undef MIXSIM_WGMMA_OUT32
#undef MIXSIM_WGMMA_D32

// A group of products: begin() before the first (their registers' other uses done, wgmma.fence),
// end() after the last (committed, waited for, and the registers' later uses after the wait).
// The products of one group run together: a kernel's independent products (S and dP; dv and dk)
// share one group, so that the second is issued while the first runs.
template <class... R>
__device__ inline void begin(R&... registers) {
  (fence_registers(registers), ...);
  fence();
}
template <class... R>
__device__ inline void end(R&... registers) {
  commit();
  wait_all();
  (fence_registers(registers), ...);
}

// mma_sync::advance for tiles that products read: each thread fences its completed copies to the
// async proxy before the barrier that publishes them.
template <class Load>
__device__ inline void advance(int t, int tiles, Load&& load) {
  mma_sync::wait_copies();
  fence_async_proxy();
  __syncthreads();
  if (t + 1 < tiles) load(t + 1);
  mma_sync::commit_copies();
}

// Issues s = q k^T for the block's 64 rows and a tile's 64 keys (swizzled tiles at q and k).
template <int HS>
__device__ inline void issue_scores(float (&s)[8][4], std::uint32_t q, std::uint32_t k) {
#pragma unroll
  for (int kk = 0; kk < HS / 16; ++kk) {
    const std::uint32_t at = (kk / 4) * kAtomBytes + (kk % 4) * 32;
    product_ss(s, descriptor(q + at, 16, 1024), descriptor(k + at, 16, 1024), kk > 0);
  }
}

// Issues acc (the warp's 16 rows x HS) += p (16 x 64, A fragments) v (a tile's 64 rows x HS).
template <int HS>
__device__ inline void issue_accumulate(float (&acc)[HS / 8][4], const std::uint32_t (&p)[4][4],
                                        std::uint32_t v) {
  auto& halves = reinterpret_cast<float(&)[HS / 64][8][4]>(acc);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int h = 0; h < HS / 64; ++h)
      product_rs(halves[h], p[kk], descriptor(v + h * kAtomBytes + kk * 2048, kAtomBytes, 1024));
}

#endif  // the sm_90a device code (and the host pass)

// The forward pass of forward_kernel<HS, 1> (the same rows per block, the same tiles in the same
// order, the same mask, softmax, roundings and stores), its products on wgmma. Every warp of the
// warpgroup takes part in every product, so warps whose rows lie past T compute them too (their
// queries are zeros, every score masked) and store nothing.
template <int HS>
__global__ void __launch_bounds__(kThreads, HS <= 64 ? 4 : 2)
    forward_kernel(void* out, bool out_bf16, float* lse, const bf16* qkv, int T, int C, int NH,
                   float scale, bool heavy_first) {
  static_assert(HS == 64 || HS == 128, "the wgmma forward takes head sizes 64 and 128");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem[];
  const std::uint32_t qs = (mma_sync::shared_address(smem) + 1023) & ~1023u;
  const auto keys = [&](int t) {  // stage t % 2: the key tile, then its values
    return qs + std::uint32_t(1 + 2 * (t % mma_sync::kStages)) * tile_bytes<HS>();
  };
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Place place = place_of(heavy_first);
  const Head head = head_of<HS>(place, T, C, NH);
  const bf16* q = qkv + head.qkv_offset;  // row t at q + t * 3C; k = q + C, v = q + 2C
  const int i0 = (place.blocks - 1 - place.block) * kRows;  // the longest blocks first
  const int tiles = (min(T, i0 + kRows) - 1) / kRows + 1;
  const int iw = i0 + warp * 16;
  const float sl = scale * mma_sync::kLog2e;
  const auto load_stage = [&](int t) {
    load_tile<HS>(keys(t), q + C, head.qkv_stride, t * kRows, T);
    load_tile<HS>(keys(t) + tile_bytes<HS>(), q + 2 * C, head.qkv_stride, t * kRows, T);
  };
  load_tile<HS>(qs, q, head.qkv_stride, i0, T);
  load_stage(0);
  mma_sync::commit_copies();

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float acc[HS / 8][4];
  mma_sync::zero<HS>(acc);
  float s[8][4] = {};  // (the first product of each tile assigns it)
  for (int t = 0; t < tiles; ++t) {
    advance(t, tiles, load_stage);  // (every product of tile t - 1 has been waited for)
    const int j0 = t * kRows;
    begin(s);
    issue_scores<HS>(s, qs, keys(t));
    end(s);
    mma_sync::online_softmax_tile<HS>(s, m, l, acc, j0 < i0 && iw + 16 <= T, iw, j0, T, sl, lane);
    std::uint32_t p[4][4];
    mma_sync::to_fragments(p, s);
    begin(acc, p);
    issue_accumulate<HS>(acc, p, keys(t) + tile_bytes<HS>());
    end(acc, p);
  }
  if (iw < T) mma_sync::finish_rows<HS>(out, out_bf16, lse, head, iw, T, C, m, l, acc, lane);
#else
  __trap();  // never launched: wgmma_runs_on() is false where this is not built
#endif
}

// The backward's two kernels (MIXSIM_ATTENTION_WGMMA_BACKWARD=1; without the fused dq), as
// mma_sync's backward_dq_kernel and backward_dkdv_kernel (the same rows per block, tiles, mask,
// roundings, sums and stores), their products on wgmma: S and dP (or S^T and dP^T) from two
// swizzled tiles each through descriptors; dS K, P^T dout and dS^T Q with the fragments from
// registers and the key, dout or query tile as a transposed B. The rows past T of a warpgroup
// compute with the others (zeros and masked elements: dS 0) and store nothing. Within rounding of
// mma_sync's: each product sums its 16 terms in the hardware's order, which wgmma and mma.sync
// need not share (the emulator, which sums them one way for both, wants the same bits).
template <int HS>
constexpr std::size_t backward_shared() {  // six tiles; lse and D rows per stage; alignment
  return 6 * tile_bytes<HS>() + 2 * mma_sync::kStages * kRows * sizeof(float) + 1024;
}

template <int HS, class Out>
__global__ void __launch_bounds__(kThreads)
    backward_dq_kernel(Out* dqkv, float* dvec, const float* dout, const bf16* dout16,
                       const bf16* qkv, const void* out, bool out_bf16, const float* lse, int T,
                       int C, int NH, float scale, bool heavy_first) {
  static_assert(HS == 64 || HS == 128, "the wgmma kernels take head sizes 64 and 128");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem[];
  const std::uint32_t at = mma_sync::shared_address(smem), pad = ((at + 1023) & ~1023u) - at;
  constexpr std::uint32_t kTile = tile_bytes<HS>();
  const std::uint32_t qs = at + pad, gs = qs + kTile;  // the block's queries, their dout rows
  const auto keys = [&](int t) {                       // stage t % 2: a key tile, then its values
    return qs + std::uint32_t(2 + 2 * (t % mma_sync::kStages)) * kTile;
  };
  float* row_lse = reinterpret_cast<float*>(smem + pad + 6 * kTile);  // (64) base 2
  float* row_d = row_lse + kRows;                                     // (64)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Place place = place_of(heavy_first);
  const Head head = head_of<HS>(place, T, C, NH);
  const bf16* q = qkv + head.qkv_offset;
  const int i0 = (place.blocks - 1 - place.block) * kRows, iw = i0 + warp * 16;
  const int tiles = (min(T, i0 + kRows) - 1) / kRows + 1;
  const float sl = scale * mma_sync::kLog2e;
  const auto load_stage = [&](int t) {
    load_tile<HS>(keys(t), q + C, head.qkv_stride, t * kRows, T);
    load_tile<HS>(keys(t) + kTile, q + 2 * C, head.qkv_stride, t * kRows, T);
  };
  load_tile<HS>(qs, q, head.qkv_stride, i0, T);
  load_tile<HS>(gs, dout16 + head.row_offset, C, i0, T);
  load_stage(0);
  mma_sync::commit_copies();
  float li[2], di[2];  // of the lane's rows g and g + 8
  mma_sync::lane_row_terms<HS>(li, di, row_d + warp * 16, row_lse + warp * 16, dvec, dout, dout16,
                               out, out_bf16, lse, head, iw, T, C);
  float dq[HS / 8][4];
  mma_sync::zero<HS>(dq);
  float s[8][4] = {}, dp[8][4] = {};
  for (int t = 0; t < tiles; ++t) {
    advance(t, tiles, load_stage);
    const int j0 = t * kRows;
    begin(s, dp);
    issue_scores<HS>(s, qs, keys(t));           // S
    issue_scores<HS>(dp, gs, keys(t) + kTile);  // dP = dout V^T
    end(s, dp);
    mma_sync::query_major_ds(s, dp, j0 < i0 && iw + 16 <= T, iw, j0, T, sl, li, di, lane);
    std::uint32_t ds[4][4];
    mma_sync::to_fragments(ds, s);
    begin(dq, ds);
    issue_accumulate<HS>(dq, ds, keys(t));  // dS K
    end(dq, ds);
  }
  if (iw < T)
    mma_sync::store_rows<HS>(dqkv + head.qkv_offset, head.qkv_stride, iw, T, dq, {scale, scale},
                             lane);
#else
  __trap();  // never launched: wgmma_runs_on() is false where this is not built
#endif
}

template <int HS, class Out>
__global__ void __launch_bounds__(kThreads, HS <= 64 ? 3 : 1)
    backward_dkdv_kernel(Out* dqkv, const bf16* dout16, const bf16* qkv, const float* lse,
                         const float* dvec, int T, int C, int NH, float scale, bool heavy_first) {
  static_assert(HS == 64 || HS == 128, "the wgmma kernels take head sizes 64 and 128");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem[];
  const std::uint32_t at = mma_sync::shared_address(smem), pad = ((at + 1023) & ~1023u) - at;
  constexpr std::uint32_t kTile = tile_bytes<HS>();
  const std::uint32_t ks = at + pad, vs = ks + kTile;  // the block's keys and values
  const auto queries = [&](int t) {  // stage t % 2: a query tile, then its dout rows
    return ks + std::uint32_t(2 + 2 * (t % mma_sync::kStages)) * kTile;
  };
  float* rows = reinterpret_cast<float*>(smem + pad + 6 * kTile);  // per stage: (64) lse, (64) D
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Place place = place_of(heavy_first);
  const Head head = head_of<HS>(place, T, C, NH);
  const bf16* q = qkv + head.qkv_offset;
  const int j0 = place.block * kRows, jw = j0 + warp * 16;  // the first blocks have the most work
  const int tiles = CEIL_DIV(T - j0, kRows);
  const float sl = scale * mma_sync::kLog2e;
  const auto load_stage = [&](int t) {  // query tile t (from j0 up), its dout, lse and D
    const int t0 = j0 + t * kRows;
    float* rt = rows + (t % mma_sync::kStages) * 2 * kRows;
    load_tile<HS>(queries(t), q, head.qkv_stride, t0, T);
    load_tile<HS>(queries(t) + kTile, dout16 + head.row_offset, C, t0, T);
    mma_sync::load_rows(rt, lse + head.lse_offset, t0, T);
    mma_sync::load_rows(rt + kRows, dvec + head.lse_offset, t0, T);
  };
  load_tile<HS>(ks, q + C, head.qkv_stride, j0, T);
  load_tile<HS>(vs, q + 2 * C, head.qkv_stride, j0, T);
  load_stage(0);
  mma_sync::commit_copies();

  float dk[HS / 8][4], dv[HS / 8][4];
  mma_sync::zero<HS>(dk);
  mma_sync::zero<HS>(dv);
  float s[8][4] = {}, dp[8][4] = {};
  for (int t = 0; t < tiles; ++t) {
    advance(t, tiles, load_stage);
    const int t0 = j0 + t * kRows;
    const std::uint32_t qt = queries(t), gt = qt + kTile;
    const float* tile_lse = rows + (t % mma_sync::kStages) * 2 * kRows;  // natural log
    const float* tile_d = tile_lse + kRows;
    begin(s, dp);
    issue_scores<HS>(s, ks, qt);   // S^T: the block's keys x the tile's queries
    issue_scores<HS>(dp, vs, gt);  // dP^T = V dout^T
    end(s, dp);
    mma_sync::key_major_p_ds(s, dp, t0 > j0 && t0 + kRows <= T, jw, t0, T, sl, tile_lse, tile_d,
                             lane);
    std::uint32_t pt[4][4], dst[4][4];
    mma_sync::to_fragments(pt, s);
    mma_sync::to_fragments(dst, dp);
    begin(dv, dk, pt, dst);
    issue_accumulate<HS>(dv, pt, gt);   // P^T dout
    issue_accumulate<HS>(dk, dst, qt);  // dS^T Q
    end(dv, dk, pt, dst);
  }
  if (jw < T) {
    Out* out_rows = dqkv + head.qkv_offset;
    mma_sync::store_rows<HS>(out_rows + C, head.qkv_stride, jw, T, dk, {scale, scale}, lane);
    mma_sync::store_rows<HS>(out_rows + 2 * C, head.qkv_stride, jw, T, dv, {1.f, 1.f}, lane);
  }
#else
  __trap();  // never launched: wgmma_runs_on() is false where this is not built
#endif
}

// Writes 1 where the device runs this file's sm_90a code (the wgmma kernels), 0 elsewhere.
__global__ void probe_kernel(int* built) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *built = 1;
#else
  *built = 0;
#endif
}

}  // namespace wgmma

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

// The grid of `row_blocks` blocks of rows per (batch, head): (row blocks, NH, B), or with
// heavy_first (NH, B, row blocks) (place_of).
dim3 grid_of(int row_blocks, int NH, int B, bool heavy_first) {
  CUDA_REQUIRE(!heavy_first || row_blocks <= 65535, "attention (tensor cores)",
               dims({{"row blocks (grid.z)", row_blocks}}));
  return heavy_first ? dim3(NH, B, row_blocks) : dim3(row_blocks, NH, B);
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
    // (the wide forward runs up to HS 64 only; the fused dq is asked separately: an opt-in must
    // not take the tensor cores from a head size its kernel does not fit)
    needed =
        std::max({mma_sync::forward_shared<H>(), H <= 64 ? mma_sync::forward_shared<H, 2>() : 0,
                  mma_sync::backward_shared<H>()});
  });
  return needed <= max_shared;
}

bool attention_tc_fused_dq_fits(int C, int NH, std::size_t max_shared) {
  if (!attention_tc_supported(C, NH, max_shared)) return false;
  bool fits = false;
  with_head_size(C / NH, [&](auto hs) {
    constexpr int H = decltype(hs)::value;
    // its dynamic shared memory and its static (the ticket), as the kernel was compiled
    static const std::size_t static_bytes = [] {
      cudaFuncAttributes attr{};
      CUDA_CHECK(cudaFuncGetAttributes(&attr, mma_sync::backward_dkdv_kernel<H, float, true>));
      return std::size_t(attr.sharedSizeBytes);
    }();
    fits = mma_sync::backward_shared<H, true>() + static_bytes <= max_shared;
  });
  return fits;
}

bool attention_wgmma_fits(int C, int NH, std::size_t max_shared) {
  if (NH <= 0 || C <= 0 || C % NH != 0) return false;
  const auto needed = [](auto hs) {
    constexpr int H = decltype(hs)::value;
    return std::max(wgmma::forward_shared<H>(), wgmma::backward_shared<H>());
  };
  if (C / NH == 64) return needed(std::integral_constant<int, 64>{}) <= max_shared;
  if (C / NH == 128) return needed(std::integral_constant<int, 128>{}) <= max_shared;
  return false;
}

bool wgmma_runs_on(int device) {
  int current = 0;
  CUDA_CHECK(cudaGetDevice(&current));
  CUDA_CHECK(cudaSetDevice(device));
  int* flag = nullptr;
  int host = 0;
  CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
  wgmma::probe_kernel<<<1, 1>>>(flag);
  cudaError_t rc = cudaGetLastError();
  if (rc == cudaSuccess) rc = cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(flag);
  CUDA_CHECK(cudaSetDevice(current));
  // no image of the probe for this device: then none of the kernels either
  if (rc == cudaErrorNoKernelImageForDevice || rc == cudaErrorInvalidDeviceFunction) {
    cudaGetLastError();
    return false;
  }
  CUDA_CHECK(rc);
  return host == 1;
}

std::size_t max_shared_per_block(int device) {
  int bytes = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return std::size_t(bytes);
}

namespace {

// The bf16 qkv that the kernels read: a bf16 one as it is, an fp32 one rounded into the workspace.
const bf16* bf16_qkv(TensorIn qkv, std::size_t n, Workspace& ws, cudaStream_t stream) {
  if (qkv.type == DType::bf16) return static_cast<const bf16*>(qkv.data);
  bf16* copy = ws.take<bf16>(n);
  to_bf16(copy, static_cast<const float*>(qkv.data), n, stream);
  return copy;
}

// The ints the fused dq takes: a semaphore per (batch, head, query tile), then the tickets.
std::size_t fused_dq_ints(int B, int NH, int row_blocks) {
  return std::size_t(B) * NH * row_blocks + 1;
}

}  // namespace

std::size_t attention_tc_workspace(bool backward, DType qkv, DType dout, int B, int T, int C,
                                   int NH, bool fused_dq) {
  const std::size_t rows = std::size_t(B) * T;
  std::size_t bytes = 0;
  if (qkv == DType::fp32) bytes += Workspace::aligned(rows * 3 * C * sizeof(bf16));
  if (backward) {  // D per row, and the bf16 copy of an fp32 dout (a bf16 one is read as stored)
    bytes += Workspace::aligned(std::size_t(B) * NH * T * sizeof(float));
    if (dout == DType::fp32) bytes += Workspace::aligned(rows * C * sizeof(bf16));
    if (fused_dq)  // dq's running sums (fp32), a semaphore per query tile, the tickets
      bytes += Workspace::aligned(rows * C * sizeof(float)) +
               Workspace::aligned(fused_dq_ints(B, NH, CEIL_DIV(T, kRows)) * sizeof(int));
  }
  return bytes;
}

void attention_forward_tc(TensorOut out, float* lse, TensorIn qkv, int B, int T, int C, int NH,
                          bool wide, bool heavy_first, bool wgmma, Workspace ws,
                          cudaStream_t stream) {
  const char* op = "attention_forward (tensor cores)";
  const Plan plan = check_and_plan(op, B, T, C, NH);
  // float2 or bf16-pair stores (the model's tensors start at multiples of 64 bytes, cudaMalloc's
  // of 256)
  CUDA_REQUIRE(aligned16(out.data), op, std::string("out not 16-byte aligned"));
  const bf16* qkv16 = bf16_qkv(qkv, std::size_t(B) * T * 3 * C, ws, stream);
  // cp.async copies 16 bytes: a bf16 qkv given as it is must start 16-byte aligned (the rounded
  // copy in the workspace does)
  CUDA_REQUIRE(aligned16(qkv16), op, std::string("a bf16 qkv not 16-byte aligned"));
  with_head_size(plan.HS, [&](auto hs) {
    constexpr int HS = decltype(hs)::value;
    const auto run = [&](auto groups) {
      constexpr int G = decltype(groups)::value;
      auto* kernel = mma_sync::forward_kernel<HS, G>;
      constexpr std::size_t shared = mma_sync::forward_shared<HS, G>();
      allow_dynamic_shared(kernel, shared);
      const dim3 grid = grid_of(CEIL_DIV(T, G * kRows), NH, B, heavy_first);
      kernel<<<grid, kThreads, shared, stream>>>(out.data, out.type == DType::bf16, lse, qkv16, T,
                                                 C, NH, plan.scale, heavy_first);
      CUDA_CHECK_LAUNCH(mma_sync::forward_kernel);
    };
    if constexpr (HS == 64 || HS == 128)
      if (wgmma) {  // the caller asked wgmma_runs_on and attention_wgmma_fits
        auto* kernel = wgmma::forward_kernel<HS>;
        constexpr std::size_t shared = wgmma::forward_shared<HS>();
        allow_dynamic_shared(kernel, shared);
        const dim3 grid = grid_of(CEIL_DIV(T, kRows), NH, B, heavy_first);
        kernel<<<grid, kThreads, shared, stream>>>(out.data, out.type == DType::bf16, lse, qkv16, T,
                                                   C, NH, plan.scale, heavy_first);
        CUDA_CHECK_LAUNCH(wgmma::forward_kernel);
        return;
      }
    if constexpr (HS <= 64)
      if (wide) return run(std::integral_constant<int, 2>{});
    run(std::integral_constant<int, 1>{});
  });
}

void attention_backward_tc(TensorOut dqkv, TensorIn dout, TensorIn qkv, TensorIn out,
                           const float* lse, int B, int T, int C, int NH, bool heavy_first,
                           bool fused_dq, bool wgmma, Workspace ws, cudaStream_t stream) {
  const char* op = "attention_backward (tensor cores)";
  const Plan plan = check_and_plan(op, B, T, C, NH);
  CUDA_REQUIRE(lse != nullptr, op, std::string("no log-sum-exp saved by attention_forward"));
  CUDA_REQUIRE(aligned16(dqkv.data), op, std::string("dqkv not 16-byte aligned"));
  const std::size_t rows = std::size_t(B) * T;
  const bf16* qkv16 = bf16_qkv(qkv, rows * 3 * C, ws, stream);
  CUDA_REQUIRE(aligned16(qkv16), op, std::string("a bf16 qkv not 16-byte aligned"));
  float* dvec = ws.take<float>(std::size_t(B) * NH * T);  // (B, NH, T)
  // a bf16 dout read as it is stored (the kernels' tiles, and D); an fp32 one rounded for the
  // tiles, and read as it is for D
  const float* dout32 = dout.type == DType::fp32 ? static_cast<const float*>(dout.data) : nullptr;
  const bf16* dout16 = static_cast<const bf16*>(dout.data);
  if (dout32) {
    bf16* rounded = ws.take<bf16>(rows * C);
    to_bf16(rounded, dout32, rows * C, stream);
    dout16 = rounded;
  }
  CUDA_REQUIRE(aligned16(dout16), op, std::string("a bf16 dout not 16-byte aligned"));
  const bool out_bf16 = out.type == DType::bf16;
  const int row_blocks = int(plan.grid.x);
  mma_sync::FusedDq fused{nullptr, nullptr, nullptr};
  if (fused_dq) {
    CUDA_REQUIRE(std::size_t(B) * NH * row_blocks < (std::size_t(1) << 31), op,
                 dims({{"B", B}, {"NH", NH}, {"row blocks", row_blocks}}) +
                     " (the fused dq numbers its blocks in an int)");
    fused.acc = ws.take<float>(rows * C);
    const std::size_t ints = fused_dq_ints(B, NH, row_blocks);
    fused.sem = ws.take<int>(ints);
    fused.tickets = fused.sem + ints - 1;
    CUDA_CHECK(cudaMemsetAsync(fused.sem, 0, ints * sizeof(int), stream));
  }
  const dim3 grid = grid_of(row_blocks, NH, B, heavy_first);
  const auto launch = [&](auto* d) {  // d: the fp32 or bf16 dqkv
    using Out = std::remove_pointer_t<decltype(d)>;
    with_head_size(plan.HS, [&](auto hs) {
      constexpr int HS = decltype(hs)::value;
      const auto dkdv = [&](auto fused_kernel) {  // std::bool_constant: backward_dkdv_kernel's
        constexpr bool kFused = decltype(fused_kernel)::value;
        constexpr std::size_t shared = mma_sync::backward_shared<HS, kFused>();
        auto* kernel = mma_sync::backward_dkdv_kernel<HS, Out, kFused>;
        allow_dynamic_shared(kernel, shared);
        kernel<<<grid, kThreads, shared, stream>>>(d, dout16, qkv16, lse, dvec, fused, T, C, NH,
                                                   plan.scale, heavy_first);
        CUDA_CHECK_LAUNCH(mma_sync::backward_dkdv_kernel);
      };
      if (fused_dq) {
        const std::size_t n = std::size_t(B) * NH * T;  // D: one warp a row
        mma_sync::row_dots_kernel<HS>
            <<<unsigned(CEIL_DIV(n, kThreads / kWarpSize)), kThreads, 0, stream>>>(
                dvec, dout32, dout16, out.data, out_bf16, T, C, NH, n);
        CUDA_CHECK_LAUNCH(mma_sync::row_dots_kernel);
        return dkdv(std::true_type{});
      }
      if constexpr (HS == 64 || HS == 128)
        if (wgmma) {  // the caller asked wgmma_runs_on and attention_wgmma_fits; not fused
          constexpr std::size_t shared = wgmma::backward_shared<HS>();
          auto* dq_kernel = wgmma::backward_dq_kernel<HS, Out>;
          auto* dkdv_kernel = wgmma::backward_dkdv_kernel<HS, Out>;
          allow_dynamic_shared(dq_kernel, shared);
          allow_dynamic_shared(dkdv_kernel, shared);
          dq_kernel<<<grid, kThreads, shared, stream>>>(d, dvec, dout32, dout16, qkv16, out.data,
                                                        out_bf16, lse, T, C, NH, plan.scale,
                                                        heavy_first);
          CUDA_CHECK_LAUNCH(wgmma::backward_dq_kernel);
          dkdv_kernel<<<grid, kThreads, shared, stream>>>(d, dout16, qkv16, lse, dvec, T, C, NH,
                                                          plan.scale, heavy_first);
          CUDA_CHECK_LAUNCH(wgmma::backward_dkdv_kernel);
          return;
        }
      constexpr std::size_t shared = mma_sync::backward_shared<HS>();
      auto* dq_kernel = mma_sync::backward_dq_kernel<HS, Out>;
      allow_dynamic_shared(dq_kernel, shared);
      dq_kernel<<<grid, kThreads, shared, stream>>>(d, dvec, dout32, dout16, qkv16, out.data,
                                                    out_bf16, lse, T, C, NH, plan.scale,
                                                    heavy_first);
      CUDA_CHECK_LAUNCH(mma_sync::backward_dq_kernel);
      dkdv(std::false_type{});
    });
  };
  typed(dqkv, launch);
}

}  // namespace mixsim::cuda
