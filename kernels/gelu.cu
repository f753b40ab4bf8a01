// GELU, tanh approximation as in GPT-2: 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi).
// Elementwise; the backward pass may run in place (dinp == dout: each element is read, then
// written, by one thread).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr float kGeluScale = 0.7978845608028654f;
constexpr float kGeluCube = 0.044715f;

template <class Out>
__global__ void gelu_forward_kernel(Out* out, const float* inp, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float x = inp[i];
    const float u = kGeluScale * (x + kGeluCube * x * x * x);
    store(out + i, 0.5f * x * (1.f + tanhf(u)));
  }
}

__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout,
                                     std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float x = inp[i];
    const float u = kGeluScale * (x + kGeluCube * x * x * x);
    const float th = tanhf(u);
    const float du = kGeluScale * (1.f + 3.f * kGeluCube * x * x);
    const float grad = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * du;
    dinp[i] = grad * dout[i];
  }
}

}  // namespace

void gelu_forward(TensorOut out, const float* inp, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = elementwise_blocks(n, kThreads);
  if (out.type == DType::bf16)
    gelu_forward_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(out.data), inp,
                                                         n);
  else
    gelu_forward_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(out.data), inp, n);
  CUDA_CHECK_LAUNCH(gelu_forward_kernel);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, std::size_t n,
                   cudaStream_t stream) {
  if (n == 0) return;
  gelu_backward_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(dinp, inp, dout,
                                                                                 n);
  CUDA_CHECK_LAUNCH(gelu_backward_kernel);
}

}  // namespace mixsim::cuda
