// The fp32 CPU backend: host memory, and each op forwarded to its kernel (cpu_kernels.hpp) after
// checking the assumptions the kernel relies on.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "mixsim/backend/cpu_kernels.hpp"
#include "mixsim/backend/cuda.hpp"
#include "mixsim/backend/device.hpp"
#include "mixsim/backend/ops.hpp"
#include "mixsim/core/bf16.hpp"
#include "mixsim/core/env.hpp"
#include "mixsim/core/error.hpp"
#include "parallel.hpp"

namespace mixsim {

namespace {

constexpr std::size_t kAlignment = 64;  // a cache line; also what AVX-512 loads like

// Copies and fills of large buffers are split over the threads: one core cannot saturate memory.
void parallel_bytes(std::size_t bytes, auto&& fn) {
  const int threads = bytes >= (std::size_t(1) << 20) ? omp_get_max_threads() : 1;
#pragma omp parallel num_threads(threads)
  {
    const cpu::Range r = cpu::split_range(bytes, omp_get_num_threads(), omp_get_thread_num());
    if (r.end > r.begin) fn(r.begin, r.end - r.begin);
  }
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(MatmulPrecision precision)
      : precision_(precision),
        tc_attention_(env_switch("MIXSIM_TC_ATTENTION", true) &&
                      precision == MatmulPrecision::bf16),
        bf16_activations_(env_switch("MIXSIM_BF16_ACTIVATIONS", true) &&
                          precision == MatmulPrecision::bf16),
        bf16_outputs_(env_switch("MIXSIM_BF16_OUTPUTS", true) &&
                      precision == MatmulPrecision::bf16),
        bf16_weights_(env_switch("MIXSIM_BF16_WEIGHTS", true) &&
                      precision == MatmulPrecision::bf16),
        bf16_attention_out_(env_switch("MIXSIM_BF16_ATTENTION_OUT", false) && bf16_activations_),
        bf16_branch_outputs_(env_switch("MIXSIM_BF16_BRANCH_OUTPUTS", false) &&
                             precision == MatmulPrecision::bf16),
        feeds_products_(env_switch("MIXSIM_LAYERNORM_FEEDS_PRODUCT", false)) {}
  std::string_view name() const override {
    return precision_ == MatmulPrecision::bf16 ? "cpu-bf16" : "cpu";
  }

  void* allocate(std::size_t bytes) override {
    const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded ? rounded : kAlignment);
    if (!p)
      fail(
          "out of host memory allocating {:.1f} MiB for the CPU backend: use a smaller model, "
          "batch or context, or a machine with more memory",
          double(bytes) / (1 << 20));
    return p;
  }
  void deallocate(void* ptr) noexcept override { std::free(ptr); }
  void upload(void* dst, const void* src, std::size_t bytes) override { copy(dst, src, bytes); }
  void download(void* dst, const void* src, std::size_t bytes) override { copy(dst, src, bytes); }
  void copy(void* dst, const void* src, std::size_t bytes) override {
    if (dst == src || bytes == 0) return;
    parallel_bytes(bytes, [&](std::size_t off, std::size_t len) {
      std::memcpy(static_cast<char*>(dst) + off, static_cast<const char*>(src) + off, len);
    });
  }
  void zero(void* ptr, std::size_t bytes) override {
    parallel_bytes(bytes, [&](std::size_t off, std::size_t len) {
      std::memset(static_cast<char*>(ptr) + off, 0, len);
    });
  }
  void synchronize() override {}
  DType activation_storage() const override {
    return bf16_activations_ ? DType::bf16 : DType::fp32;
  }

  void encoder_forward(float* out, const int* tokens, const float* wte, const float* wpe, int B,
                       int T, int C) override {
    MIXSIM_CHECK(B > 0 && T > 0 && C > 0, "encoder_forward: B={} T={} C={}", B, T, C);
    cpu::encoder_forward(out, tokens, wte, wpe, B, T, C);
  }
  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* tokens, int B,
                        int T, int C) override {
    MIXSIM_CHECK(B > 0 && T > 0 && C > 0, "encoder_backward: B={} T={} C={}", B, T, C);
    cpu::encoder_backward(dwte, dwpe, dout, tokens, B, T, C);
  }
  void layernorm_forward(TensorOut out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int N, int C) override {
    MIXSIM_CHECK(N > 0 && C > 0, "layernorm_forward: N={} C={}", N, C);
    const std::size_t n = std::size_t(N) * C;
    float* o = staging(out, n);
    cpu::layernorm_forward(o, mean, rstd, inp, weight, bias, N, C);
    narrow(out, o, n);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, TensorIn dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    MIXSIM_CHECK(N > 0 && C > 0 && mean && rstd, "layernorm_backward: N={} C={}", N, C);
    // a bf16 dout (branch_output_storage) widened, exact
    const float* d = wide(scratch_[0], dout, std::size_t(N) * C);
    cpu::layernorm_backward(dinp, dweight, dbias, d, inp, weight, mean, rstd, N, C);
  }
  bool layernorm_feeds_products() const override { return feeds_products_; }
  TensorIn layernorm_backward_feeding(float* dinp, float* dweight, float* dbias, TensorIn dout,
                                      const float* inp, const float* weight, const float* mean,
                                      const float* rstd, int N, int C, float* product_dbias,
                                      TensorOut copy) override {
    MIXSIM_CHECK(feeds_products_,
                 "layernorm_backward_feeding: MIXSIM_LAYERNORM_FEEDS_PRODUCT is off");
    layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    if (product_dbias) cpu::bias_backward(product_dbias, dinp, N, C);
    // the products' bf16 operand, as matmul_backward rounds an fp32 dout (bf16 precision)
    if (precision_ == MatmulPrecision::fp32 || !copy.data) return dinp;
    MIXSIM_CHECK(copy.type == DType::bf16, "layernorm_backward_feeding: the copy must be bf16");
    store(copy, dinp, std::size_t(N) * C);
    return TensorIn(copy.data, DType::bf16);
  }
  void matmul_forward(TensorOut out, TensorIn inp, TensorIn weight_t, TensorIn bias_t, int N, int C,
                      int OC) override {
    MIXSIM_CHECK(N > 0 && C > 0 && OC > 0, "matmul_forward: N={} C={} OC={}", N, C, OC);
    MIXSIM_CHECK(out.type == DType::fp32 || precision_ == MatmulPrecision::bf16,
                 "matmul_forward: a bf16 out needs bf16 products (cpu-bf16), not {}", name());
    MIXSIM_CHECK(!bias_t.data || bias_t.type == DType::fp32 || out.type == DType::bf16,
                 "matmul_forward: a bf16 bias needs a bf16 out (an fp32 out adds the fp32 bias)");
    const float* x = operand(scratch_[0], inp, std::size_t(N) * C);
    const float* weight = operand(scratch_[1], weight_t, std::size_t(OC) * C);
    // a bf16 out: the bias rounded to bf16 first, as cuBLASLt's bias epilogue takes it (a bf16
    // bias is that rounding, made already)
    const float* bias = static_cast<const float*>(bias_t.data);
    if (bias_t.data && bias_t.type == DType::bf16)
      bias = widened(scratch_[2], bias_t.data, std::size_t(OC));
    else if (bias && out.type == DType::bf16)
      bias = rounded(scratch_[2], bias, OC);
    const std::size_t n = std::size_t(N) * OC;
    float* y = staging(out, n);
    cpu::matmul_forward(y, x, weight, bias, N, C, OC);
    narrow(out, y, n);
  }
  void matmul_backward(TensorOut dinp_t, float* dweight, float* dbias, TensorIn dout, TensorIn inp,
                       TensorIn weight, int N, int C, int OC) override {
    MIXSIM_CHECK(N > 0 && C > 0 && OC > 0, "matmul_backward: N={} C={} OC={}", N, C, OC);
    MIXSIM_CHECK(dinp_t.type == DType::fp32 || precision_ == MatmulPrecision::bf16,
                 "matmul_backward: a bf16 dinp needs bf16 products (cpu-bf16), on {}", name());
    // a bf16 dinp: the fp32 product rounded once
    float* dinp = dinp_t.data ? staging(dinp_t, std::size_t(N) * C) : nullptr;
    // As cuda-bf16: the products take bf16 operands (rounded here, or stored so; in fp32
    // precision fp32 ones as given), the bias gradient sums dout as stored (an fp32 one
    // unrounded, a bf16 one widened). The weight is read only for dinp.
    const float* w = dinp ? operand(scratch_[1], weight, std::size_t(OC) * C) : nullptr;
    const float* g = operand(scratch_[0], dout, std::size_t(N) * OC);
    cpu::matmul_backward(dinp, dweight, static_cast<float*>(nullptr), g,
                         operand(scratch_[2], inp, std::size_t(N) * C), w, N, C, OC);
    if (dbias)
      cpu::bias_backward(dbias, dout.type == DType::fp32 ? static_cast<const float*>(dout.data) : g,
                         N, OC);
    if (dinp) narrow(dinp_t, dinp, std::size_t(N) * C);
  }
  bool attention_rounds_qkv(int C, int NH) const override {
    return tc_attention_ && cpu::attention_bf16_supported(C, NH);
  }
  bool bf16_product_outputs() const override { return bf16_outputs_; }
  bool bf16_weight_copies() const override { return bf16_weights_; }
  DType attention_out_storage() const override {
    return bf16_attention_out_ ? DType::bf16 : DType::fp32;
  }
  DType branch_output_storage() const override {
    return bf16_branch_outputs_ ? DType::bf16 : DType::fp32;
  }
  void store(TensorOut dst, const float* src, std::size_t n) override {
    MIXSIM_CHECK(!bytes_overlap(dst.data, n * element_bytes(dst.type), src, n * sizeof(float)),
                 "store: the destination overlaps the source");
    if (dst.type == DType::fp32)
      copy(dst.data, src, n * sizeof(float));
    else
      narrow(dst, src, n);
  }
  void attention_forward(TensorOut out_t, float* lse, TensorIn qkv, int B, int T, int C,
                         int NH) override {
    check_attention("attention_forward", B, T, C, NH);
    const float* x = attention_input("attention_forward", qkv, B, T, C, NH);
    const std::size_t n = std::size_t(B) * T * C;
    float* out = staging(out_t, n);
    if (attention_rounds_qkv(C, NH))
      cpu::attention_bf16_forward(out, lse, x, B, T, C, NH);
    else
      cpu::attention_forward(out, lse, x, B, T, C, NH);
    narrow(out_t, out, n);
  }
  void attention_backward(TensorOut dqkv_t, TensorIn dout_t, TensorIn qkv, TensorIn out_t,
                          const float* lse, int B, int T, int C, int NH) override {
    check_attention("attention_backward", B, T, C, NH);
    MIXSIM_CHECK(lse, "attention_backward needs the log-sum-exp saved by attention_forward");
    MIXSIM_CHECK(
        dqkv_t.type == DType::fp32 || attention_rounds_qkv(C, NH),
        "attention_backward: a bf16 dqkv needs an attention that rounds q, k and v to bf16 "
        "itself (cpu-bf16 with MIXSIM_TC_ATTENTION on, head size a multiple of 16 up to "
        "128); got C={} NH={} on {}",
        C, NH, name());
    const float* x = attention_input("attention_backward", qkv, B, T, C, NH);
    // a bf16 out and dout (attention_out_storage) widened, exact: D = dout . out of the rounded
    // values
    const float* out = wide(scratch_[0], out_t, std::size_t(B) * T * C);
    const float* dout = wide(scratch_[1], dout_t, std::size_t(B) * T * C);
    const std::size_t n = std::size_t(B) * T * 3 * C;
    float* dqkv = staging(dqkv_t, n);
    if (attention_rounds_qkv(C, NH))
      cpu::attention_bf16_backward(dqkv, dout, x, out, lse, B, T, C, NH);
    else
      cpu::attention_backward(dqkv, dout, x, out, lse, B, T, C, NH);
    narrow(dqkv_t, dqkv, n);
  }
  void gelu_forward(TensorOut out, TensorIn inp, std::size_t n) override {
    const float* x = wide(scratch_[0], inp, n);
    float* o = staging(out, n);
    cpu::gelu_forward(o, x, n);
    narrow(out, o, n);
  }
  void gelu_backward(TensorOut dinp, TensorIn inp, const float* dout, std::size_t n) override {
    MIXSIM_CHECK(dinp.type == DType::fp32 || !bytes_overlap(dinp.data, n * 2, dout, n * 4),
                 "gelu_backward: a bf16 dinp overlaps dout");
    const float* x = wide(scratch_[0], inp, n);
    float* d = staging(dinp, n);
    cpu::gelu_backward(d, x, dout, n);
    narrow(dinp, d, n);
  }
  // A bf16 dpre (bf16 products, with a bf16 pre): the product into an fp32 buffer of its own,
  // then gelu'(pre) times it, rounded once.
  void gelu_matmul_backward(TensorOut dpre, float* dweight, float* dbias, TensorIn dout,
                            TensorIn inp, TensorIn pre, TensorIn weight, int N, int C,
                            int OC) override {
    if (dpre.type == DType::fp32) {
      Backend::gelu_matmul_backward(dpre, dweight, dbias, dout, inp, pre, weight, N, C, OC);
      return;
    }
    MIXSIM_CHECK(precision_ == MatmulPrecision::bf16 && pre.type == DType::bf16,
                 "gelu_matmul_backward: a bf16 dpre needs bf16 products and a bf16 pre ({})",
                 name());
    const std::size_t n = std::size_t(N) * C;
    if (product_scratch_.size() < n) product_scratch_.resize(n);
    matmul_backward(product_scratch_.data(), dweight, dbias, dout, inp, weight, N, C, OC);
    gelu_backward(dpre, pre, product_scratch_.data(), n);
  }
  void residual_forward(float* out, const float* a, const float* b, std::size_t n) override {
    cpu::residual_forward(out, a, b, n);
  }
  // The two ops, a bf16 b (a branch's output: branch_output_storage) widened first, exact.
  void residual_layernorm_forward(float* residual, TensorOut out, float* mean, float* rstd,
                                  const float* a, TensorIn b, const float* weight,
                                  const float* bias, int N, int C) override {
    MIXSIM_CHECK(N > 0 && C > 0, "residual_layernorm_forward: N={} C={}", N, C);
    const std::size_t n = std::size_t(N) * C;
    residual_forward(residual, a, wide(scratch_[0], b, n), n);
    layernorm_forward(out, mean, rstd, residual, weight, bias, N, C);
  }
  void classifier(TensorOut logits_t, float* losses, const int* targets, float dloss,
                  TensorOut dlogits, int N, int V, int Vp) override {
    MIXSIM_CHECK(N > 0 && V > 0 && V <= Vp, "classifier: N={} V={} Vp={}", N, V, Vp);
    const bool write = dlogits.data != nullptr;
    const auto* logits = static_cast<const float*>(logits_t.data);  // when fp32
    if (logits_t.type == DType::bf16) {
      MIXSIM_CHECK(!write || (dlogits.type == DType::bf16 && dlogits.data == logits_t.data),
                   "classifier: the dlogits of bf16 logits are written in place: pass the logits");
    } else {
      MIXSIM_CHECK(dlogits.type == DType::bf16 || !write || dlogits.data == logits_t.data,
                   "classifier: fp32 dlogits are written in place: pass the logits");
      if (dlogits.type == DType::fp32 || !write) {
        cpu::classifier(static_cast<float*>(logits_t.data), losses, targets, dloss, write, N, V,
                        Vp);
        return;
      }
      MIXSIM_CHECK(!bytes_overlap(dlogits.data, std::size_t(N) * Vp * 2, logits,
                                  std::size_t(N) * Vp * sizeof(float)),
                   "classifier: bf16 dlogits must not overlap the logits");
    }
    // bf16 logits, or bf16 dlogits of fp32 logits (which stay as they were): a chunk of rows at a
    // time in fp32 (widened, or copied), the classifier in place on it, the gradient rounded into
    // the bf16 dlogits (the logits themselves, or a buffer of their own).
    constexpr int kRows = 64;
    if (out_scratch_.size() < std::size_t(kRows) * Vp) out_scratch_.resize(std::size_t(kRows) * Vp);
    for (int r0 = 0; r0 < N; r0 += kRows) {
      const int rows = std::min(kRows, N - r0);
      const std::size_t at = std::size_t(r0) * Vp, n = std::size_t(rows) * Vp;
      if (logits_t.type == DType::bf16)
        widened(out_scratch_, static_cast<const std::uint16_t*>(logits_t.data) + at, n);
      else
        copy(out_scratch_.data(), logits + at, n * sizeof(float));
      cpu::classifier(out_scratch_.data(), losses + r0, targets + r0, dloss, write, rows, V, Vp);
      if (write)
        narrow({static_cast<std::uint16_t*>(dlogits.data) + at, DType::bf16}, out_scratch_.data(),
               n);
    }
  }
  void adamw(float* params, float* m, float* v, const float* grads, std::size_t n,
             const AdamWArgs& args, std::uint16_t* params16) override {
    MIXSIM_CHECK(args.bias_correction1 > 0 && args.bias_correction2 > 0,
                 "adamw: bias corrections must be positive (step count starts at 1)");
    cpu::adamw(params, m, v, grads, n, args);
    if (params16) store({params16, DType::bf16}, params, n);  // (a second pass: the reference)
  }
  double sum_squares(const float* x, std::size_t n) override { return cpu::sum_squares(x, n); }
  void weighted_sum(float* out, const float* const* inputs, const float* weights, int k,
                    std::size_t n) override {
    MIXSIM_CHECK(k > 0, "weighted_sum of {} buffers", k);
    cpu::weighted_sum(out, inputs, weights, k, n);
  }
  void scale(float* x, float alpha, std::size_t n) override { cpu::scale(x, alpha, n); }

 private:
  // x rounded to bf16 (to nearest even) into `scratch`, which grows as needed.
  static const float* rounded(std::vector<float>& scratch, const float* x, std::size_t n) {
    if (scratch.size() < n) scratch.resize(n);
    float* out = scratch.data();
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
    for (std::size_t i = 0; i < n; ++i) out[i] = round_to_bf16(x[i]);
    return out;
  }

  // The n bf16 values at `bits` widened into `scratch` (exact).
  static const float* widened(std::vector<float>& scratch, const void* bits, std::size_t n) {
    if (scratch.size() < n) scratch.resize(n);
    const auto* b = static_cast<const std::uint16_t*>(bits);
    float* out = scratch.data();
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
    for (std::size_t i = 0; i < n; ++i) out[i] = bf16_value(b[i]);
    return out;
  }

  // The fp32 values of a tensor that is not a product's operand: as given, or a bf16 one widened
  // into `scratch`.
  static const float* wide(std::vector<float>& scratch, TensorIn t, std::size_t n) {
    return t.type == DType::fp32 ? static_cast<const float*>(t.data) : widened(scratch, t.data, n);
  }
  // The fp32 values of a product's operand: in bf16 precision rounded into `scratch`; a bf16
  // tensor is widened into it (exact: its values are bf16 already, in either precision).
  const float* operand(std::vector<float>& scratch, TensorIn t, std::size_t n) {
    const float* x = static_cast<const float*>(t.data);
    if (t.type == DType::fp32)
      return precision_ == MatmulPrecision::bf16 ? rounded(scratch, x, n) : x;
    return widened(scratch, t.data, n);
  }
  // The fp32 qkv that attention reads: as given, or a bf16 one widened into scratch (exact), which
  // only an attention that rounds q, k and v to bf16 itself may take.
  const float* attention_input(const char* op, TensorIn qkv, int B, int T, int C, int NH) {
    if (qkv.type == DType::fp32) return static_cast<const float*>(qkv.data);
    MIXSIM_CHECK(attention_rounds_qkv(C, NH),
                 "{}: a bf16 qkv needs an attention that rounds q, k and v to bf16 itself "
                 "(cpu-bf16 with MIXSIM_TC_ATTENTION on, head size a multiple of 16 up to 128); "
                 "got C={} NH={} on {}",
                 op, C, NH, name());
    return widened(qkv_scratch_, qkv.data, std::size_t(B) * T * 3 * C);
  }
  // Where an op computes the n values of `out`: out itself when fp32, else a scratch buffer that
  // narrow() then rounds into the bf16 tensor.
  float* staging(TensorOut out, std::size_t n) {
    if (out.type == DType::fp32) return static_cast<float*>(out.data);
    if (out_scratch_.size() < n) out_scratch_.resize(n);
    return out_scratch_.data();
  }
  static void narrow(TensorOut out, const float* values, std::size_t n) {
    if (out.type == DType::fp32) return;
    auto* bits = static_cast<std::uint16_t*>(out.data);
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
    for (std::size_t i = 0; i < n; ++i) bits[i] = bf16_bits(values[i]);
  }

  MatmulPrecision precision_;
  // The switches cuda-bf16 reads too (core/env.hpp; on unless set to 0), so that cpu-bf16 stays
  // its reference: MIXSIM_TC_ATTENTION, cuda-bf16 runs attention on tensor cores
  // (kernels/attention_tc.cu) and cpu-bf16 rounds as those kernels do (attention_bf16.cpp);
  // MIXSIM_BF16_ACTIVATIONS, the model stores its product-only tensors in bf16
  // (activation_storage); MIXSIM_BF16_OUTPUTS, products write bf16
  // themselves where the model stores bf16 (bf16_product_outputs); MIXSIM_BF16_WEIGHTS, the model
  // hands the products bf16 copies of its weights (bf16_weight_copies).
  bool tc_attention_;
  bool bf16_activations_;
  bool bf16_outputs_;
  bool bf16_weights_;
  // MIXSIM_BF16_ATTENTION_OUT (an opt-in, off unless set to 1; with bf16 activation storage): the
  // model stores attention's output and its gradient in bf16 (attention_out_storage)
  bool bf16_attention_out_;
  // MIXSIM_BF16_BRANCH_OUTPUTS (an opt-in, off unless set to 1; bf16 precision): the model stores
  // the projections' outputs and the gradients the LayerNorm backwards read in bf16
  // (branch_output_storage)
  bool bf16_branch_outputs_;
  // MIXSIM_LAYERNORM_FEEDS_PRODUCT (an opt-in, off unless set to 1; both backends): the LayerNorm
  // backward that makes the next projection's dout also makes its bias gradient and bf16 operand
  // (layernorm_backward_feeding); here with the very sums and rounding matmul_backward makes, so
  // that the CPU's results are bit for bit the same either way and test the model's path
  bool feeds_products_;
  std::vector<float> scratch_[3];       // product operands rounded (cpu-bf16) or widened (bf16)
  std::vector<float> out_scratch_;      // outputs computed in fp32 before they are rounded to bf16
  std::vector<float> qkv_scratch_;      // a bf16 qkv widened for attention
  std::vector<float> product_scratch_;  // gelu_matmul_backward's fp32 product before a bf16 dpre

  static void check_attention(const char* op, int B, int T, int C, int NH) {
    MIXSIM_CHECK(B > 0 && T > 0 && NH > 0 && C % NH == 0, "{}: B={} T={} C={} NH={}", op, B, T, C,
                 NH);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(MatmulPrecision precision) {
  return std::make_unique<CpuBackend>(precision);
}

int local_cuda_device(int device_count) {
  if (device_count <= 0) return 0;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    const char* value = std::getenv(var);
    if (!value || !*value) continue;
    char* end = nullptr;
    const long rank = std::strtol(value, &end, 10);
    if (*end == '\0' && rank >= 0) return int(rank % device_count);
  }
  return 0;
}

std::unique_ptr<Backend> make_backend(std::string_view name) {
  if (name == "cpu") return make_cpu_backend();
  if (name == "cpu-bf16") return make_cpu_backend(MatmulPrecision::bf16);
  if (name == "cuda" || name == "cuda-bf16") {
#ifdef MIXSIM_HAVE_CUDA
    const GpuAvailability gpu = gpu_availability();
    if (gpu.count == 0)
      fail("backend '{}' needs a usable GPU, but {}: use backend cpu on this machine", name,
           gpu.reason);
    return make_cuda_backend(local_cuda_device(gpu.count),
                             name == "cuda" ? MatmulPrecision::fp32 : MatmulPrecision::bf16);
#else
    usage_fail(
        "backend '{}' is not available: mixsim was built without CUDA (MIXSIM_CUDA=OFF or nvcc "
        "not found); rebuild with -DMIXSIM_CUDA=ON, or use backend cpu",
        name);
#endif
  }
  usage_fail("unknown backend '{}': choose cpu, cpu-bf16, cuda or cuda-bf16", name);
}

}  // namespace mixsim
