// GELU, tanh approximation as in GPT-2: 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi).
// Elementwise, from an fp32 or bf16 input into an fp32 or bf16 output; the backward pass may run
// in place (dinp == dout, fp32: each element is read, then written, by one thread).
#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr float kGeluScale = 0.7978845608028654f;
constexpr float kGeluCube = 0.044715f;

template <class Out, class In>
__global__ void gelu_forward_kernel(Out* out, const In* inp, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float x = load(inp + i);
    const float u = kGeluScale * (x + kGeluCube * x * x * x);
    store(out + i, 0.5f * x * (1.f + tanhf(u)));
  }
}

template <class Out, class In>
__global__ void gelu_backward_kernel(Out* dinp, const In* inp, const float* dout, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float x = load(inp + i);
    const float u = kGeluScale * (x + kGeluCube * x * x * x);
    const float th = tanhf(u);
    const float du = kGeluScale * (1.f + 3.f * kGeluCube * x * x);
    const float grad = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * du;
    store(dinp + i, grad * dout[i]);
  }
}

// Calls fn(out, in) with the two tensors as typed pointers (fp32 or bf16 each).
template <class In, class Fn>
void typed(TensorOut out, In in, Fn&& fn) {
  const auto with_out = [&](auto* o) {
    if (in.type == DType::bf16)
      fn(o, static_cast<const __nv_bfloat16*>(in.data));
    else
      fn(o, static_cast<const float*>(in.data));
  };
  if (out.type == DType::bf16)
    with_out(static_cast<__nv_bfloat16*>(out.data));
  else
    with_out(static_cast<float*>(out.data));
}

}  // namespace

void gelu_forward(TensorOut out, TensorIn inp, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = elementwise_blocks(n, kThreads);
  typed(out, inp, [&](auto* o, const auto* x) {
    gelu_forward_kernel<<<blocks, kThreads, 0, stream>>>(o, x, n);
  });
  CUDA_CHECK_LAUNCH(gelu_forward_kernel);
}

void gelu_backward(TensorOut dinp, TensorIn inp, const float* dout, std::size_t n,
                   cudaStream_t stream) {
  if (n == 0) return;
  CUDA_REQUIRE(dinp.type == DType::fp32 ||
                   !bytes_overlap(dinp.data, n * element_bytes(dinp.type), dout, n * sizeof(float)),
               "gelu_backward", std::string("a bf16 dinp that overlaps dout"));
  const unsigned blocks = elementwise_blocks(n, kThreads);
  typed(dinp, inp, [&](auto* d, const auto* x) {
    gelu_backward_kernel<<<blocks, kThreads, 0, stream>>>(d, x, dout, n);
  });
  CUDA_CHECK_LAUNCH(gelu_backward_kernel);
}

}  // namespace mixsim::cuda
