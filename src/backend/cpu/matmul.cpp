// Matrix products of the CPU backend: BLAS for the products, OpenMP for the bias terms.
#include <cblas.h>

#include "mixsim/backend/cpu_kernels.hpp"
#include "parallel.hpp"

namespace mixsim::cpu {

namespace {

CBLAS_TRANSPOSE trans(bool t) {
  return t ? CblasTrans : CblasNoTrans;
}

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
               const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, double alpha,
               const double* A, int lda, const double* B, int ldb, double beta, double* C,
               int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

template <class F>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, F alpha, const F* A, int lda, const F* B,
          int ldb, F beta, F* C, int ldc) {
  blas_gemm(trans(trans_a), trans(trans_b), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <class F>
void matmul_forward(F* out, const F* inp, const F* weight, const F* bias, int N, int C, int OC) {
  // out (N,OC) = inp (N,C) @ weight^T (C,OC) [+ bias]: the bias is written first and the
  // product added to it (beta = 1), which saves a second pass over out.
  if (bias) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * OC >= kParallelMin)
    for (int n = 0; n < N; ++n) {
      F* row = out + std::size_t(n) * OC;
      for (int o = 0; o < OC; ++o) row[o] = bias[o];
    }
  }
  gemm<F>(false, true, N, OC, C, F(1), inp, C, weight, C, bias ? F(1) : F(0), out, OC);
}

template <class F>
void matmul_backward(F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                     int N, int C, int OC) {
  // dinp (N,C) = dout (N,OC) @ weight (OC,C)
  if (dinp) gemm<F>(false, false, N, C, OC, F(1), dout, OC, weight, C, F(0), dinp, C);
  // dweight (OC,C) += dout^T (OC,N) @ inp (N,C)
  gemm<F>(true, false, OC, C, N, F(1), dout, OC, inp, C, F(1), dweight, C);
  if (dbias) bias_backward(dbias, dout, N, OC);
}

template <class F>
void bias_backward(F* dbias, const F* dout, int N, int OC) {
  // Each thread owns a block of columns and adds the rows in order, so the sum does not depend
  // on the thread count.
  const int threads = std::size_t(N) * OC >= kParallelMin ? omp_get_max_threads() : 1;
#pragma omp parallel num_threads(threads)
  {
    const Range r = split_range(OC, omp_get_num_threads(), omp_get_thread_num());
    for (int n = 0; n < N; ++n) {
      const F* row = dout + std::size_t(n) * OC;
      for (std::size_t o = r.begin; o < r.end; ++o) dbias[o] += row[o];
    }
  }
}

#define MIXSIM_INSTANTIATE(F)                                                                    \
  template void gemm<F>(bool, bool, int, int, int, F, const F*, int, const F*, int, F, F*, int); \
  template void matmul_forward<F>(F*, const F*, const F*, const F*, int, int, int);              \
  template void matmul_backward<F>(F*, F*, F*, const F*, const F*, const F*, int, int, int);     \
  template void bias_backward<F>(F*, const F*, int, int);
MIXSIM_INSTANTIATE(float)
MIXSIM_INSTANTIATE(double)
#undef MIXSIM_INSTANTIATE

}  // namespace mixsim::cpu
