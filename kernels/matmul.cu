// Matrix products through cuBLAS sgemm in fp32 (no TF32: results compare to the CPU backend).
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

void matmul_forward(cublasHandle_t handle, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int C, int OC, cudaStream_t stream) {
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
  const float alpha = 1.f;
  CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &alpha, weight, C, inp, C,
                           &beta, out, OC));
}

std::size_t matmul_backward_workspace(int N, int OC) {
  return column_sums_workspace(N, OC);
}

void matmul_backward(cublasHandle_t handle, float* dinp, float* dweight, float* dbias,
                     const float* dout, const float* inp, const float* weight, int N, int C, int OC,
                     Workspace ws, cudaStream_t stream) {
  check_dims("matmul_backward", N, C, OC);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float one = 1.f, zero = 0.f;
  // dinp^T (C,N) = weight^T (C,OC) . dout^T (OC,N)   (assigned)
  if (dinp)
    CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, weight, C, dout, OC,
                             &zero, dinp, C));
  // dweight^T (C,OC) += inp^T (C,N) . dout (N,OC)
  CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, C, dout, OC, &one,
                           dweight, C));
  if (dbias) column_sums_accumulate(dbias, dout, N, OC, ws, stream);
}

}  // namespace mixsim::cuda
