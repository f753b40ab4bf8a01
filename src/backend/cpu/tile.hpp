// A small register-blocked matrix product for the attention kernel, where the BLAS would be
// called per head and per block: OpenBLAS (OpenMP build) serialises calls made from several
// threads at once, and its per-call overhead dominates products this small. Written with GCC
// vector extensions, so that each target clone of the caller gets its own vector width.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

// The vector helpers below are always inlined, so no vector ever crosses a call boundary and the
// ABI note about passing wide vectors without AVX does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mixsim::cpu {

// Which part of a causal product can be skipped because the operand holds zeros there (or
// the result there is never read). "Query" indices are i0 + row for the rows of a block.
enum class Causal {
  none,
  cols_upto_row,  // C(i, j) only needed for key j <= query i0+i: later column blocks skipped
  k_upto_row,     // A(i, p) = 0 for key p > query i0+i: the sum over p stops there
  k_from_col,     // A(p, j) ... B(p, j) = 0 for query i0+p < key j: the sum starts at j - i0
};

// Eight lanes of F: two SSE registers, or one AVX register for float.
template <class F>
struct Vec8Of;
template <>
struct Vec8Of<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec8Of<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <class F>
using Vec8 = typename Vec8Of<F>::type;

template <class F>
[[gnu::always_inline]] inline Vec8<F> load8(const F* p) {
  Vec8<F> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class F>
[[gnu::always_inline]] inline void store8(F* p, Vec8<F> v) {
  std::memcpy(p, &v, sizeof(v));
}

// C (m,n) = alpha * A (m,k) @ B (k,n) + beta * C, all row-major with leading dimensions; rows
// in blocks of 4, columns in blocks of 16 held in registers for the whole sum over p. Double
// (the finite-difference tests) takes the plain loops: the same sums, no speed needed.
template <class F>
[[gnu::always_inline]] inline void tile_product(int m, int n, int k, F alpha, const F* A, int lda,
                                                const F* B, int ldb, F beta, F* C, int ldc,
                                                Causal causal = Causal::none, int i0 = 0) {
  constexpr int R = 4, W = 16;
  for (int j = 0; j < n; j += W) {
    const int p_begin = causal == Causal::k_from_col ? std::clamp(j - i0, 0, k) : 0;
    const bool full_cols = j + W <= n;
    for (int i = 0; i < m; i += R) {
      if (causal == Causal::cols_upto_row && j > i0 + i + R - 1) continue;
      const int p_end = causal == Causal::k_upto_row ? std::min(k, i0 + i + R) : k;
      if (std::is_same_v<F, float> && full_cols && i + R <= m) {
        Vec8<F> c[R][2] = {};
        for (int p = p_begin; p < p_end; ++p) {
          const Vec8<F> b0 = load8(B + std::size_t(p) * ldb + j);
          const Vec8<F> b1 = load8(B + std::size_t(p) * ldb + j + 8);
          for (int r = 0; r < R; ++r) {
            const F a = A[std::size_t(i + r) * lda + p];
            c[r][0] += a * b0;
            c[r][1] += a * b1;
          }
        }
        for (int r = 0; r < R; ++r) {
          F* out = C + std::size_t(i + r) * ldc + j;
          if (beta == F(0)) {
            store8(out, alpha * c[r][0]);
            store8(out + 8, alpha * c[r][1]);
          } else {
            store8(out, alpha * c[r][0] + beta * load8(out));
            store8(out + 8, alpha * c[r][1] + beta * load8(out + 8));
          }
        }
      } else {  // ragged edge: plain loops
        for (int r = i; r < std::min(m, i + R); ++r)
          for (int jj = j; jj < std::min(n, j + W); ++jj) {
            F s = 0;
            for (int p = p_begin; p < p_end; ++p)
              s += A[std::size_t(r) * lda + p] * B[std::size_t(p) * ldb + jj];
            F* out = C + std::size_t(r) * ldc + jj;
            *out = beta == F(0) ? alpha * s : alpha * s + beta * *out;
          }
      }
    }
  }
}

// dst (rows, cols), contiguous = src (rows, cols) with leading dimension lds.
template <class F>
[[gnu::always_inline]] inline void pack_rows(F* dst, const F* src, int lds, int rows, int cols) {
  for (int r = 0; r < rows; ++r)
    std::memcpy(dst + std::size_t(r) * cols, src + std::size_t(r) * lds, sizeof(F) * cols);
}

// dst (cols, rows) = src (rows, cols)^T with leading dimensions. Blocks of 16 source rows: each
// destination row gets a whole cache line of 16 values at a time, while the 16 source rows stay
// in L1 (one value per row and destination row would touch a new line for every store).
template <class F>
[[gnu::always_inline]] inline void transpose(F* dst, int ldd, const F* src, int lds, int rows,
                                             int cols) {
  constexpr int kRows = 16;
  for (int r0 = 0; r0 < rows; r0 += kRows) {
    const int nr = std::min(kRows, rows - r0);
    for (int c = 0; c < cols; ++c) {
      F* d = dst + std::size_t(c) * ldd + r0;
      const F* s = src + std::size_t(r0) * lds + c;
      for (int r = 0; r < nr; ++r) d[r] = s[std::size_t(r) * lds];
    }
  }
}

}  // namespace mixsim::cpu

#pragma GCC diagnostic pop
