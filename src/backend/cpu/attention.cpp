// Causal self-attention of the CPU backend, flash-attention style: per (batch, head) the queries
// are taken in blocks of kQueryBlock rows; scores, softmax and products of a block live in a
// per-thread scratch of kQueryBlock x T, and only the log-sum-exp of each row is kept for the
// backward pass, which recomputes the probabilities. Memory O(T) per row, work O(T^2) per head
// (the causal zeros are skipped). Heads are independent: each thread owns whole (b, h) pairs, so
// no sum crosses threads and the results do not depend on the schedule.
// The kernels do not read floating-point exception flags; without trapping math the compiler
// can vectorise the clamps and selects of the softmax (the results are unchanged).
#pragma GCC optimize("no-trapping-math")

#include <cmath>
#include <limits>
#include <vector>

#include "mixsim/backend/cpu_kernels.hpp"
#include "parallel.hpp"
#include "tile.hpp"

namespace mixsim::cpu {

namespace {

constexpr int kQueryBlock = 64;

int round_up16(int n) {
  return (n + 15) / 16 * 16;
}

// Per-thread scratch that keeps its capacity across calls (no page faults per call).
template <class F>
F* scratch(std::size_t count, int slot) {
  thread_local std::vector<F> buffers[9];
  auto& buf = buffers[slot];
  if (buf.size() < count) buf.resize(count);
  return buf.data();
}

// One head's view into the (B,T,3C) qkv tensor: rows of q, k and v with stride 3C.
template <class F>
struct HeadQkv {
  const F* q;
  const F* k;
  const F* v;
  int stride;
};

// Probabilities of query rows [i0, i0+m) over keys [0, n), n = i0+m, from the scores in P
// (row stride ld), in place: softmax over keys j <= i0+r, zeros after. With `lse_in`, the saved
// log-sum-exp is used (backward); otherwise it is computed and stored to `lse_out` (nullable).
template <class F>
[[gnu::always_inline]] inline void softmax_rows(F* P, int ld, int i0, int m, const F* lse_in,
                                                F* lse_out) {
  const int n = i0 + m;
  for (int r = 0; r < m; ++r) {
    F* row = P + std::size_t(r) * ld;
    const int len = i0 + r + 1;  // keys visible to query i0+r
    if (lse_in) {
      const F shift = lse_in[i0 + r];
      for (int j = 0; j < len; ++j) row[j] = fast_exp(row[j] - shift);
    } else {
      F mx = -std::numeric_limits<F>::infinity();
      for (int j = 0; j < len; ++j) mx = row[j] > mx ? row[j] : mx;
      F sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < len; ++j) {
        row[j] = fast_exp(row[j] - mx);
        sum += row[j];
      }
      const F inv = F(1) / sum;
      for (int j = 0; j < len; ++j) row[j] *= inv;
      if (lse_out) lse_out[i0 + r] = mx + std::log(sum);
    }
    for (int j = len; j < n; ++j) row[j] = F(0);
  }
}

template <class F>
[[gnu::target_clones("avx2", "default")]] void head_forward(F* out, F* lse, HeadQkv<F> h, int T,
                                                            int C, int HS) {
  const int Tp = round_up16(T);
  F* kT = scratch<F>(std::size_t(HS) * Tp, 0);          // (HS, Tp)
  F* P = scratch<F>(std::size_t(kQueryBlock) * Tp, 1);  // (kQueryBlock, Tp)
  // v packed (T, HS): its rows lie 3C apart in qkv, each on its own page for large C
  F* v = scratch<F>(std::size_t(T) * HS, 2);
  transpose(kT, Tp, h.k, h.stride, T, HS);
  pack_rows(v, h.v, h.stride, T, HS);
  const F scale = F(1) / std::sqrt(F(HS));
  for (int i0 = 0; i0 < T; i0 += kQueryBlock) {
    const int m = std::min(kQueryBlock, T - i0), n = i0 + m;
    // S (m,n) = scale * q (m,HS) @ k^T (HS,n), then softmax in place
    tile_product(m, n, HS, scale, h.q + std::size_t(i0) * h.stride, h.stride, kT, Tp, F(0), P, Tp,
                 Causal::cols_upto_row, i0);
    softmax_rows(P, Tp, i0, m, static_cast<const F*>(nullptr), lse);
    // out (m,HS) = P (m,n) @ v (n,HS)
    tile_product(m, HS, n, F(1), P, Tp, v, HS, F(0), out + std::size_t(i0) * C, C,
                 Causal::k_upto_row, i0);
  }
}

// Backward of one head. With S = scale q k^T, P = softmax(S), o = P v and D_t = do_t . o_t:
// dP = do v^T, dS = P * (dP - D), dq = scale dS k, dk = scale dS^T q, dv = P^T do. dk and dv
// are accumulated transposed, (HS, T), so that every product has a row-major right operand.
template <class F>
[[gnu::target_clones("avx2", "default")]] void head_backward(F* dq, F* dk, F* dv, const F* dout,
                                                             const F* out, const F* lse,
                                                             HeadQkv<F> h, int T, int C, int HS) {
  const int Tp = round_up16(T), stride = h.stride, QB = kQueryBlock;
  F* kT = scratch<F>(std::size_t(HS) * Tp, 0);   // (HS, Tp)
  F* P = scratch<F>(std::size_t(QB) * Tp, 1);    // (QB, Tp)
  F* vT = scratch<F>(std::size_t(HS) * Tp, 2);   // (HS, Tp)
  F* dS = scratch<F>(std::size_t(QB) * Tp, 3);   // (QB, Tp)
  F* dkT = scratch<F>(std::size_t(HS) * Tp, 4);  // (HS, Tp)
  F* dvT = scratch<F>(std::size_t(HS) * Tp, 5);  // (HS, Tp)
  F* qT = scratch<F>(std::size_t(HS) * QB, 6);   // (HS, QB)
  F* doT = scratch<F>(std::size_t(HS) * QB, 7);  // (HS, QB)
  F* k = scratch<F>(std::size_t(T) * HS, 8);     // (T, HS) packed
  pack_rows(k, h.k, stride, T, HS);
  transpose(kT, Tp, h.k, stride, T, HS);
  transpose(vT, Tp, h.v, stride, T, HS);
  std::fill(dkT, dkT + std::size_t(HS) * Tp, F(0));
  std::fill(dvT, dvT + std::size_t(HS) * Tp, F(0));
  const F scale = F(1) / std::sqrt(F(HS));
  for (int i0 = 0; i0 < T; i0 += QB) {
    const int m = std::min(QB, T - i0), n = i0 + m;
    const F* q = h.q + std::size_t(i0) * stride;
    const F* g = dout + std::size_t(i0) * C;
    tile_product(m, n, HS, scale, q, stride, kT, Tp, F(0), P, Tp, Causal::cols_upto_row, i0);
    softmax_rows(P, Tp, i0, m, lse, static_cast<F*>(nullptr));
    tile_product(m, n, HS, F(1), g, C, vT, Tp, F(0), dS, Tp, Causal::cols_upto_row, i0);  // dP
    for (int r = 0; r < m; ++r) {
      const F* o = out + std::size_t(i0 + r) * C;
      const F* gr = g + std::size_t(r) * C;
      F D = 0;
      for (int d = 0; d < HS; ++d) D += gr[d] * o[d];
      F* ds = dS + std::size_t(r) * Tp;
      const F* p = P + std::size_t(r) * Tp;
      const int len = i0 + r + 1;
      for (int j = 0; j < len; ++j) ds[j] = p[j] * (ds[j] - D);
      for (int j = len; j < n; ++j) ds[j] = F(0);
    }
    // dq (m,HS) = scale * dS (m,n) @ k (n,HS)
    tile_product(m, HS, n, scale, dS, Tp, k, HS, F(0), dq + std::size_t(i0) * stride, stride,
                 Causal::k_upto_row, i0);
    // dk^T (HS,n) += scale * q^T (HS,m) @ dS (m,n);  dv^T (HS,n) += do^T (HS,m) @ P (m,n)
    transpose(qT, QB, q, stride, m, HS);
    transpose(doT, QB, g, C, m, HS);
    tile_product(HS, n, m, scale, qT, QB, dS, Tp, F(1), dkT, Tp, Causal::k_from_col, i0);
    tile_product(HS, n, m, F(1), doT, QB, P, Tp, F(1), dvT, Tp, Causal::k_from_col, i0);
  }
  transpose(dk, stride, dkT, Tp, HS, T);
  transpose(dv, stride, dvT, Tp, HS, T);
}

}  // namespace

template <class F>
void attention_forward(F* out, F* lse, const F* qkv, int B, int T, int C, int NH) {
  const int HS = C / NH;
#pragma omp parallel for schedule(static) collapse(2)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const F* base = qkv + std::size_t(b) * T * 3 * C + std::size_t(h) * HS;
      const HeadQkv<F> head{base, base + C, base + 2 * C, 3 * C};
      F* head_lse = lse ? lse + (std::size_t(b) * NH + h) * T : nullptr;
      head_forward(out + std::size_t(b) * T * C + std::size_t(h) * HS, head_lse, head, T, C, HS);
    }
  }
}

template <class F>
void attention_backward(F* dqkv, const F* dout, const F* qkv, const F* out, const F* lse, int B,
                        int T, int C, int NH) {
  const int HS = C / NH;
#pragma omp parallel for schedule(static) collapse(2)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const std::size_t qkv_off = std::size_t(b) * T * 3 * C + std::size_t(h) * HS;
      const std::size_t out_off = std::size_t(b) * T * C + std::size_t(h) * HS;
      const HeadQkv<F> head{qkv + qkv_off, qkv + qkv_off + C, qkv + qkv_off + 2 * C, 3 * C};
      F* dq = dqkv + qkv_off;
      head_backward(dq, dq + C, dq + 2 * C, dout + out_off, out + out_off,
                    lse + (std::size_t(b) * NH + h) * T, head, T, C, HS);
    }
  }
}

#define MIXSIM_INSTANTIATE(F)                                                                    \
  template void attention_forward<F>(F*, F*, const F*, int, int, int, int);                      \
  template void attention_backward<F>(F*, const F*, const F*, const F*, const F*, int, int, int, \
                                      int);
MIXSIM_INSTANTIATE(float)
MIXSIM_INSTANTIATE(double)
#undef MIXSIM_INSTANTIATE

}  // namespace mixsim::cpu
