// Matrix products through cuBLAS (cublasGemmEx on fp32 matrices): in full fp32 (no TF32: results
// compare to the CPU backend), or with bf16 compute (CUBLAS_COMPUTE_32F_FAST_16BF: inputs rounded
// to bf16 for the tensor cores, fp32 accumulation and output).
// cuBLAS is column-major: a row-major (R, K) matrix is its column-major (K, R) transpose, so
// out (N,OC) = inp (N,C) @ weight^T is computed as out^T (OC,N) = weight (OC,C) . inp^T (C,N).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

void cublas_check(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS error in ") + what + " at " + file + ":" +
                std::to_string(line) + ": " + cublasGetStatusString(status));
}
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)

constexpr int kThreads = 256;

__global__ void broadcast_bias_kernel(float* out, const float* bias, int OC, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = bias[i % OC];
}

// C (m,n) = alpha op(A) op(B) + beta C, column-major, every matrix fp32.
void gemm(cublasHandle_t handle, MatmulPrecision precision, cublasOperation_t ta,
          cublasOperation_t tb, int m, int n, int k, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  const cublasComputeType_t compute =
      precision == MatmulPrecision::bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
  CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb,
                            &beta, C, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
}

void check_dims(const char* op, int N, int C, int OC) {
  CUDA_REQUIRE(N > 0 && C > 0 && OC > 0, op, dims({{"N", N}, {"C", C}, {"OC", OC}}));
}

}  // namespace

void set_fp32_math(cublasHandle_t handle) {
  // The default math mode keeps sgemm in full fp32 (TF32 only with CUBLAS_TF32_TENSOR_OP_MATH);
  // atomics stay off, the default, so that products are the same on every run.
  CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  CUBLAS_CHECK(cublasSetAtomicsMode(handle, CUBLAS_ATOMICS_NOT_ALLOWED));
}

void matmul_forward(cublasHandle_t handle, MatmulPrecision precision, float* out, const float* inp,
                    const float* weight, const float* bias, int N, int C, int OC,
                    cudaStream_t stream) {
  check_dims("matmul_forward", N, C, OC);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  // As on the CPU: the bias is written first and the product added to it (beta = 1).
  float beta = 0.f;
  if (bias) {
    const std::size_t n = std::size_t(N) * OC;
    broadcast_bias_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(out, bias, OC,
                                                                                    n);
    CUDA_CHECK_LAUNCH(broadcast_bias_kernel);
    beta = 1.f;
  }
  gemm(handle, precision, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, 1.f, weight, C, inp, C, beta, out,
       OC);
}

std::size_t matmul_backward_workspace(int N, int OC) {
  return column_sums_workspace(N, OC);
}

void matmul_backward(cublasHandle_t handle, MatmulPrecision precision, float* dinp, float* dweight,
                     float* dbias, const float* dout, const float* inp, const float* weight, int N,
                     int C, int OC, Workspace ws, cudaStream_t stream) {
  check_dims("matmul_backward", N, C, OC);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  // dinp^T (C,N) = weight^T (C,OC) . dout^T (OC,N)   (assigned)
  if (dinp)
    gemm(handle, precision, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, 1.f, weight, C, dout, OC, 0.f, dinp,
         C);
  // dweight^T (C,OC) += inp^T (C,N) . dout (N,OC)
  gemm(handle, precision, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, 1.f, inp, C, dout, OC, 1.f, dweight,
       C);
  if (dbias) column_sums_accumulate(dbias, dout, N, OC, ws, stream);
}

}  // namespace mixsim::cuda
