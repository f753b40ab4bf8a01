#include "mixsim/model/gpt.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <utility>
#include <vector>

#include "mixsim/core/error.hpp"
#include "mixsim/core/rng.hpp"

namespace mixsim {

namespace {

// Rows of logits scored at a time by evaluate(): bounds its memory to kEvalChunk x Vp floats.
constexpr int kEvalChunk = 256;
// init() draws each tensor in blocks of this many values, each block from its own random stream,
// so that the blocks can be filled in parallel with the same result for every thread count.
constexpr std::size_t kInitBlock = std::size_t(1) << 16;

// The slices of layer l of stacked per-layer tensors (parameters or gradients).
struct LayerParams {
  float* ln1w;      // (C)
  float* ln1b;      // (C)
  float* qkvw;      // (3C, C)
  float* qkvb;      // (3C)
  float* attprojw;  // (C, C)
  float* attprojb;  // (C)
  float* ln2w;      // (C)
  float* ln2b;      // (C)
  float* fcw;       // (4C, C)
  float* fcb;       // (4C)
  float* fcprojw;   // (C, 4C)
  float* fcprojb;   // (C)
};

LayerParams layer_params(const ParamTensors<float>& p, int l, std::size_t C) {
  const std::size_t L = std::size_t(l);
  return {p.ln1w + L * C,
          p.ln1b + L * C,
          p.qkvw + L * 3 * C * C,
          p.qkvb + L * 3 * C,
          p.attprojw + L * C * C,
          p.attprojb + L * C,
          p.ln2w + L * C,
          p.ln2b + L * C,
          p.fcw + L * 4 * C * C,
          p.fcb + L * 4 * C,
          p.fcprojw + L * 4 * C * C,
          p.fcprojb + L * C};
}

// Fills `out` with normal(0, stddev) values; block b of tensor `index` uses stream (index, b).
void fill_normal(std::span<float> out, double stddev, const Rng& root, std::uint64_t index) {
  const Rng tensor_rng = root.split(index);
  const std::size_t blocks = (out.size() + kInitBlock - 1) / kInitBlock;
#pragma omp parallel for schedule(static)
  for (std::size_t b = 0; b < blocks; ++b) {
    Rng rng = tensor_rng.split(b);
    const std::size_t end = std::min(out.size(), (b + 1) * kInitBlock);
    for (std::size_t i = b * kInitBlock; i < end; ++i) out[i] = float(stddev * rng.normal());
  }
}

}  // namespace

// Training activations. Per-layer tensors are stacked over L with a stride of R = max_batch *
// context rows, so that backward() finds layer l's values whatever B and T the batch has. The
// tensors only matrix products read (TensorOut) are stored as storage_ says: fp32 or bf16.
struct Gpt::Activations {
  float* encoded;      // (R, C)
  TensorOut ln1;       // (L, R, C)
  float* ln1_mean;     // (L, R)
  float* ln1_rstd;     // (L, R)
  TensorOut qkv;       // (L, R, 3C): bf16 only where attention rounds it (qkv_storage)
  float* qkv_product;  // (R, 3C) the product before it is rounded into a bf16 qkv, else null
  TensorOut atty;      // (L, R, C): bf16 where attention_out_storage says
  float* att_lse;      // (L, R*NH): (B, NH, T) per layer
  float* residual2;    // (L, R, C)
  TensorOut ln2;       // (L, R, C)
  float* ln2_mean;     // (L, R)
  float* ln2_rstd;     // (L, R)
  TensorOut fch;       // (L, R, 4C): bf16 where the products write it so (output_storage)
  TensorOut fch_gelu;  // (L, R, 4C)
  float* residual3;    // (L, R, C)
  TensorOut proj;      // (R, C) output of a projection before the residual add (not kept):
                       // bf16 where branch_output_storage says
  TensorOut lnf;       // (R, C)
  float* lnf_mean;     // (R)
  float* lnf_rstd;     // (R)
  TensorOut logits;    // (R, Vp): bf16 where the products write it so (output_storage)
  TensorOut dlogits;   // (R, Vp): the logits themselves (written in place) in fp32 storage or
                       // where the logits are bf16 (output_storage), else
                       // a bf16 buffer of their own
  float* losses;       // (R)
  float* dresidual;    // (R, C) gradient of the residual stream, shared by all layers
  float* dbuf;         // (R, C) gradient of a LayerNorm output (stored as branch_output_storage
                       // says) or of the attention output (as attention_out_storage says)
  float* dbuf4;        // (R, 4C) gradient of the MLP hidden layer or of qkv
  TensorOut dresidual16;  // (R, C) bf16: dresidual as the next projection's backward takes it
                          // (Backend::layernorm_backward_feeding); null unless the backend feeds
};

// One layer's view of the activations (training: slices of Activations; evaluation: buffers
// reused by every layer, with nothing saved for backward).
struct Gpt::LayerActs {
  TensorOut ln1;       // (B,T,C)
  float* ln1_mean;     // (B,T) nullable
  float* ln1_rstd;     // (B,T) nullable
  TensorOut qkv;       // (B,T,3C)
  TensorOut atty;      // (B,T,C)
  float* att_lse;      // (B,NH,T) nullable
  TensorOut proj;      // (B,T,C)
  float* residual2;    // (B,T,C)
  TensorOut ln2;       // (B,T,C)
  float* ln2_mean;     // (B,T) nullable
  float* ln2_rstd;     // (B,T) nullable
  TensorOut fch;       // (B,T,4C)
  TensorOut fch_gelu;  // (B,T,4C)
  float* residual3;    // (B,T,C)
  float* qkv_product;  // (B,T,3C) fp32, rounded into a bf16 qkv; null when qkv is fp32
};

struct Gpt::NextNorm {
  TensorOut out;
  float* mean;  // nullable
  float* rstd;  // nullable
  const float* weight;
  const float* bias;
};

namespace {

// The weight and bias of the LayerNorm that reads block l's output: ln1 of block l + 1, or, after
// the last block, lnf.
std::pair<const float*, const float*> norm_after(const ParamTensors<float>& p, int l, int L,
                                                 std::size_t C) {
  if (l + 1 == L) return {p.lnfw, p.lnfb};
  const LayerParams next = layer_params(p, l + 1, C);
  return {next.ln1w, next.ln1b};
}

// The tensor that starts at element `index` of t.
TensorOut from(TensorOut t, std::size_t index) {
  return {static_cast<char*>(t.data) + index * element_bytes(t.type), t.type};
}

}  // namespace

Gpt::Gpt(const ModelConfig& config, Backend& backend, int max_batch,
         std::optional<DType> activation_storage)
    : layout_(config),
      backend_(backend),
      max_batch_(max_batch),
      storage_(activation_storage.value_or(backend.activation_storage())),
      params_(backend, layout_.total()) {
  if (max_batch < 1) usage_fail("the batch size must be at least 1 (got {})", max_batch);
}

Gpt::~Gpt() = default;

DType Gpt::qkv_storage() const {
  const ModelDims& d = dims();
  return storage_ == DType::bf16 && backend_.attention_rounds_qkv(d.C, d.NH) ? DType::bf16
                                                                             : DType::fp32;
}

// A bf16 qkv is the fp32 product rounded by store(), unless the backend's products write bf16
// themselves (then the bias is rounded first: Backend::matmul_forward).
bool Gpt::qkv_rounded_by_store() const {
  return qkv_storage() == DType::bf16 && !backend_.bf16_product_outputs();
}

DType Gpt::output_storage() const {
  return storage_ == DType::bf16 && backend_.bf16_product_outputs() ? DType::bf16 : DType::fp32;
}

DType Gpt::attention_out_storage() const {
  return storage_ == DType::bf16 && backend_.attention_out_storage() == DType::bf16 ? DType::bf16
                                                                                    : DType::fp32;
}

DType Gpt::branch_output_storage() const {
  return storage_ == DType::bf16 && backend_.branch_output_storage() == DType::bf16 ? DType::bf16
                                                                                    : DType::fp32;
}

float* Gpt::grads() {
  if (!grads_.get()) {
    grads_ = DeviceBuffer<float>(backend_, layout_.total());
    backend_.zero(grads_.get(), grads_.bytes());
  }
  return grads_.get();
}

void Gpt::init(std::uint64_t seed) {
  const ModelDims& d = dims();
  std::vector<float> host(layout_.total(), 0.0f);
  const Rng root(seed);
  const double residual_std = 0.02 / std::sqrt(2.0 * d.L);
  for (int i = 0; i < kNumParams; ++i) {
    const TensorInfo& t = layout_.tensors()[i];
    std::span<float> values(host.data() + t.offset, t.numel);
    const Param p = static_cast<Param>(i);
    if (p == Param::ln1w || p == Param::ln2w || p == Param::lnfw) {
      std::fill(values.begin(), values.end(), 1.0f);
    } else if (t.decay) {  // the matrices and embeddings; biases stay 0
      const bool residual = p == Param::attprojw || p == Param::fcprojw;
      fill_normal(values, residual ? residual_std : 0.02, root, std::uint64_t(i));
    }
  }
  // Padded vocabulary rows: never used as inputs, and their logits are excluded from the loss.
  const std::size_t wte_used = std::size_t(d.V) * d.C;
  std::fill(host.begin() + wte_used, host.begin() + std::size_t(d.Vp) * d.C, 0.0f);
  set_params(host);
}

void Gpt::set_params(std::span<const float> host) {
  if (host.size() != layout_.total())
    fail(
        "parameter buffer has {} floats but the model needs {}: the checkpoint was written for "
        "another model configuration",
        host.size(), layout_.total());
  backend_.upload(params_.get(), host.data(), params_.bytes());
  weights16_current_ = false;
}

void Gpt::get_params(std::span<float> host) const {
  MIXSIM_CHECK(host.size() == layout_.total(), "get_params: {} != {}", host.size(),
               layout_.total());
  backend_.download(host.data(), params_.get(), params_.bytes());
}

void Gpt::zero_grad() {
  backend_.zero(grads(), grads_.bytes());
}

void Gpt::check_batch(const int* tokens, const int* targets, int B, int T, int maxB) const {
  const ModelDims& d = dims();
  if (B < 1 || B > maxB || T < 1 || T > d.maxT)
    fail(
        "batch of {} x {} tokens does not fit the model: at most {} sequences of at most {} "
        "tokens (model.context)",
        B, T, maxB, d.maxT);
  const std::size_t n = std::size_t(B) * T;
  for (std::size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= d.V)
      fail(
          "token id {} at position {} is outside the vocabulary [0, {}): the data was "
          "tokenized for another vocabulary (model.vocab_size)",
          tokens[i], i, d.V);
    if (targets[i] >= d.V)
      fail("target id {} at position {} is outside the vocabulary [0, {})", targets[i], i, d.V);
  }
}

std::size_t Gpt::count_targets(const int* targets, std::size_t n) const {
  std::size_t count = 0;
  for (std::size_t i = 0; i < n; ++i) count += targets[i] >= 0;
  return count;
}

void Gpt::ensure_training() {
  if (acts_) return;
  const ModelDims& d = dims();
  const std::size_t L = d.L, C = d.C, R = std::size_t(max_batch_) * d.maxT;
  acts_ = std::make_unique<Activations>();
  Activations& a = *acts_;
  const DType st = storage_;
  // Carves the tensors out of `base` (each at a multiple of 64 bytes) and returns the bytes
  // used: run once without memory to size the allocation, then on it.
  auto carve = [&](char* base) {
    std::size_t at = 0;
    auto next = [&](std::size_t count, DType type = DType::fp32) -> void* {
      void* p = base ? base + at : nullptr;
      at += (count * element_bytes(type) + 63) / 64 * 64;
      return p;
    };
    auto next_f = [&](std::size_t count) { return static_cast<float*>(next(count)); };
    auto next_t = [&](std::size_t count) { return TensorOut{next(count, st), st}; };
    a.encoded = next_f(R * C);
    a.ln1 = next_t(L * R * C);
    a.ln1_mean = next_f(L * R);
    a.ln1_rstd = next_f(L * R);
    const DType qst = qkv_storage(), ost = output_storage();
    a.qkv = TensorOut{next(L * R * 3 * C, qst), qst};
    a.qkv_product = qkv_rounded_by_store() ? next_f(R * 3 * C) : nullptr;
    const DType ast = attention_out_storage();
    a.atty = TensorOut{next(L * R * C, ast), ast};
    a.att_lse = next_f(L * R * d.NH);
    a.residual2 = next_f(L * R * C);
    a.ln2 = next_t(L * R * C);
    a.ln2_mean = next_f(L * R);
    a.ln2_rstd = next_f(L * R);
    a.fch = TensorOut{next(L * R * 4 * C, ost), ost};
    a.fch_gelu = next_t(L * R * 4 * C);
    a.residual3 = next_f(L * R * C);
    const DType bst = branch_output_storage();
    a.proj = TensorOut{next(R * C, bst), bst};
    a.lnf = next_t(R * C);
    a.lnf_mean = next_f(R);
    a.lnf_rstd = next_f(R);
    a.logits = TensorOut{next(R * d.Vp, ost), ost};
    // in place over fp32 logits, or over bf16 ones (products' bf16 outputs); else bf16 apart
    a.dlogits = st == DType::bf16 && ost == DType::fp32 ? next_t(R * d.Vp) : a.logits;
    a.losses = next_f(R);
    a.dresidual = next_f(R * C);
    a.dbuf = next_f(R * C);
    a.dbuf4 = next_f(R * 4 * C);
    a.dresidual16 = backend_.layernorm_feeds_products()
                        ? TensorOut{next(R * C, DType::bf16), DType::bf16}
                        : TensorOut{};
    return at;
  };
  static_assert(sizeof(Activations) == 15 * sizeof(float*) + 11 * sizeof(TensorOut),
                "carve() assigns each of the 26");
  acts_memory_ = DeviceBuffer<char>(backend_, carve(nullptr));
  carve(acts_memory_.get());
  train_tokens_ = DeviceBuffer<int>(backend_, R);
  train_targets_ = DeviceBuffer<int>(backend_, R);
  grads();
}

Gpt::LayerActs Gpt::train_layer(int l) const {
  const ModelDims& d = dims();
  const std::size_t C = d.C, R = std::size_t(max_batch_) * d.maxT, L = std::size_t(l);
  const Activations& a = *acts_;
  return {from(a.ln1, L * R * C),
          a.ln1_mean + L * R,
          a.ln1_rstd + L * R,
          from(a.qkv, L * R * 3 * C),
          from(a.atty, L * R * C),
          a.att_lse + L * R * d.NH,
          a.proj,
          a.residual2 + L * R * C,
          from(a.ln2, L * R * C),
          a.ln2_mean + L * R,
          a.ln2_rstd + L * R,
          from(a.fch, L * R * 4 * C),
          from(a.fch_gelu, L * R * 4 * C),
          a.residual3 + L * R * C,
          a.qkv_product};
}

void Gpt::forward_block(int l, const float* residual, const LayerActs& a, const NextNorm& next,
                        int B, int T) {
  Backend& be = backend_;
  const ModelDims& d = dims();
  const int C = d.C, N = B * T;
  const LayerParams p = layer_params(layout_.carve(params_.get()), l, C);
  // attention: residual2 = residual + attproj(attention(qkv(ln1(residual))))
  if (a.qkv_product) {  // a bf16 qkv: the product in fp32, then rounded (what attention reads)
    be.matmul_forward(a.qkv_product, a.ln1, product_weight(p.qkvw),
                      product_bias(p.qkvb, a.qkv_product), N, C, 3 * C);
    be.store(a.qkv, a.qkv_product, std::size_t(N) * 3 * C);
  } else {  // fp32, or bf16 written by the product itself (bf16_product_outputs)
    be.matmul_forward(a.qkv, a.ln1, product_weight(p.qkvw), product_bias(p.qkvb, a.qkv), N, C,
                      3 * C);
  }
  be.attention_forward(a.atty, a.att_lse, a.qkv, B, T, C, d.NH);
  be.matmul_forward(a.proj, a.atty, product_weight(p.attprojw), product_bias(p.attprojb, a.proj), N,
                    C, C);
  be.residual_layernorm_forward(a.residual2, a.ln2, a.ln2_mean, a.ln2_rstd, residual, a.proj,
                                p.ln2w, p.ln2b, N, C);
  // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))), and the next LayerNorm
  be.matmul_gelu_forward(a.fch_gelu, a.fch, a.ln2, product_weight(p.fcw),
                         product_bias(p.fcb, a.fch), N, C, 4 * C);
  be.matmul_forward(a.proj, a.fch_gelu, product_weight(p.fcprojw), product_bias(p.fcprojb, a.proj),
                    N, 4 * C, C);
  be.residual_layernorm_forward(a.residual3, next.out, next.mean, next.rstd, a.residual2, a.proj,
                                next.weight, next.bias, N, C);
}

std::uint16_t* Gpt::weight_copy() {
  if (!backend_.bf16_weight_copies()) return nullptr;
  if (weights16_.size() == 0) weights16_ = DeviceBuffer<std::uint16_t>(backend_, layout_.total());
  return weights16_.get();
}

void Gpt::round_weights() {
  if (weights16_current_) return;
  std::uint16_t* copy = weight_copy();
  if (!copy) return;
  backend_.store({copy, DType::bf16}, params_.get(), layout_.total());
  weights16_current_ = true;
}

StepStats Gpt::update(AdamW& optimizer, double lr, const OptimConfig& config) {
  weights16_current_ = false;  // (until the update has written it)
  std::uint16_t* copy = weight_copy();
  const StepStats stats = optimizer.step(params_.get(), grads(), lr, config, copy);
  weights16_current_ = copy != nullptr;
  return stats;
}

TensorIn Gpt::product_bias(const float* b, TensorOut out) const {
  if (out.type != DType::bf16 || weights16_.size() == 0) return b;
  return product_weight(b);
}

TensorIn Gpt::product_weight(const float* w) const {
  if (weights16_.size() == 0) return w;
  if (w < params_.get() || w >= params_.get() + layout_.total())
    fail("Gpt::product_weight: a weight outside the model's parameters (an internal error)");
  return {weights16_.get() + (w - params_.get()), DType::bf16};
}

float Gpt::forward(const int* tokens, const int* targets, int B, int T, float grad_scale) {
  check_batch(tokens, targets, B, T, max_batch_);
  ensure_training();
  const std::size_t N = std::size_t(B) * T;
  const std::size_t valid = count_targets(targets, N);
  if (valid == 0) fail("forward(): every target of the batch is negative (skipped): no loss");
  Backend& be = backend_;
  const ModelDims& d = dims();
  const ParamTensors<float> p = layout_.carve(params_.get());
  Activations& a = *acts_;
  be.upload(train_tokens_.get(), tokens, N * sizeof(int));
  be.upload(train_targets_.get(), targets, N * sizeof(int));
  round_weights();

  be.encoder_forward(a.encoded, train_tokens_.get(), p.wte, p.wpe, B, T, d.C);
  const float* residual = a.encoded;
  LayerActs la = train_layer(0);
  be.layernorm_forward(la.ln1, la.ln1_mean, la.ln1_rstd, residual, p.ln1w, p.ln1b, int(N), d.C);
  for (int l = 0; l < d.L; ++l) {
    const LayerActs this_layer = la;
    const auto [w, b] = norm_after(p, l, d.L, d.C);
    NextNorm next{a.lnf, a.lnf_mean, a.lnf_rstd, w, b};
    if (l + 1 < d.L) {
      la = train_layer(l + 1);
      next = {la.ln1, la.ln1_mean, la.ln1_rstd, w, b};
    }
    forward_block(l, residual, this_layer, next, B, T);
    residual = this_layer.residual3;
  }
  be.matmul_forward(a.logits, a.lnf, product_weight(p.wte), nullptr, int(N), d.C, d.Vp);
  const float dloss = grad_scale / float(valid);
  be.classifier(a.logits, a.losses, train_targets_.get(), dloss, a.dlogits, int(N), d.V, d.Vp);

  std::vector<float> losses(N);
  be.download(losses.data(), a.losses, N * sizeof(float));
  double sum = 0;
  for (float x : losses) sum += x;
  last_B_ = B;
  last_T_ = T;
  return float(sum / double(valid));
}

Gpt::ProductGrad Gpt::layernorm_backward_to(float* dweight, float* dbias, TensorIn dout,
                                            const float* inp, const float* weight,
                                            const float* mean, const float* rstd, int N, int C,
                                            float* product_dbias) {
  Activations& s = *acts_;
  if (!product_dbias || !backend_.layernorm_feeds_products()) {
    backend_.layernorm_backward(s.dresidual, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    return {s.dresidual, product_dbias};
  }
  return {backend_.layernorm_backward_feeding(s.dresidual, dweight, dbias, dout, inp, weight, mean,
                                              rstd, N, C, product_dbias, s.dresidual16),
          nullptr};
}

Gpt::ProductGrad Gpt::backward_block(int l, const LayerActs& a, int B, int T,
                                     const ProductGrad& fcproj) {
  Backend& be = backend_;
  const ModelDims& d = dims();
  const int C = d.C, N = B * T;
  const LayerParams p = layer_params(layout_.carve(params_.get()), l, C);
  const ParamTensors<float> all_grads = layout_.carve(grads_.get());
  const LayerParams g = layer_params(all_grads, l, C);
  Activations& s = *acts_;
  const float* residual = l == 0 ? s.encoded : train_layer(l - 1).residual3;
  // MLP. The gradient of fcproj's output is dresidual itself (a residual add passes it on), as
  // the LayerNorm backward before left it (fcproj). dbuf4 = the gradient of fch, through the GELU
  // (stored as fch is).
  const TensorOut dpre{s.dbuf4, a.fch.type};
  be.gelu_matmul_backward(dpre, g.fcprojw, fcproj.dbias, fcproj.dout, a.fch_gelu, a.fch,
                          product_weight(p.fcprojw), N, 4 * C, C);
  // the gradients of the LayerNorms' outputs, stored as branch_output_storage says, in dbuf
  const TensorOut dnorm{s.dbuf, branch_output_storage()};
  be.matmul_backward(dnorm, g.fcw, g.fcb, dpre, a.ln2, product_weight(p.fcw), N, C, 4 * C);
  const ProductGrad attproj = layernorm_backward_to(g.ln2w, g.ln2b, dnorm, a.residual2, p.ln2w,
                                                    a.ln2_mean, a.ln2_rstd, N, C, g.attprojb);
  // Attention; dbuf4 now holds dqkv (B,T,3C). The gradient of attention's output is stored as
  // the output is (attention_out_storage), in dbuf.
  const TensorOut datt{s.dbuf, a.atty.type};
  be.matmul_backward(datt, g.attprojw, attproj.dbias, attproj.dout, a.atty,
                     product_weight(p.attprojw), N, C, C);
  // dqkv in bf16 where the qkv and the products' outputs are (attention then rounds it as it
  // stores it; the qkv bias gradient sums the stored values)
  const TensorOut dqkv{s.dbuf4, a.qkv.type == DType::bf16 ? output_storage() : DType::fp32};
  be.attention_backward(dqkv, datt, a.qkv, a.atty, a.att_lse, B, T, C, d.NH);
  be.matmul_backward(dnorm, g.qkvw, g.qkvb, dqkv, a.ln1, product_weight(p.qkvw), N, C, 3 * C);
  // the layer below's fcproj takes dresidual next (layer 0's: the encoder, no product)
  float* below = l > 0 ? layer_params(all_grads, l - 1, C).fcprojb : nullptr;
  return layernorm_backward_to(g.ln1w, g.ln1b, dnorm, residual, p.ln1w, a.ln1_mean, a.ln1_rstd, N,
                               C, below);
}

void Gpt::backward(const GradsReady& grads_ready) {
  if (!acts_ || last_B_ == 0) fail("backward() needs a forward() first");
  Backend& be = backend_;
  const ModelDims& d = dims();
  const int B = last_B_, T = last_T_, N = B * T, C = d.C;
  const ParamTensors<float> p = layout_.carve(params_.get());
  const ParamTensors<float> g = layout_.carve(grads_.get());
  Activations& a = *acts_;
  // The classifier left dlogits in a.dlogits; the head is tied to wte.
  const TensorOut dnorm{a.dbuf, branch_output_storage()};  // the gradient of lnf's output
  be.matmul_backward(dnorm, g.wte, nullptr, a.dlogits, a.lnf, product_weight(p.wte), N, C, d.Vp);
  be.zero(a.dresidual, std::size_t(N) * C * sizeof(float));
  const float* last_residual = train_layer(d.L - 1).residual3;
  ProductGrad next = layernorm_backward_to(g.lnfw, g.lnfb, dnorm, last_residual, p.lnfw, a.lnf_mean,
                                           a.lnf_rstd, N, C, layer_params(g, d.L - 1, C).fcprojb);
  auto report = [&](Param t, int layer) {
    const TensorInfo& info = layout_[t];
    const std::size_t per = layer < 0 ? info.numel : info.numel / std::size_t(d.L);
    grads_ready(
        std::span<float>(grads_.get() + info.offset + per * std::size_t(std::max(layer, 0)), per));
  };
  if (grads_ready) {
    report(Param::lnfw, -1);
    report(Param::lnfb, -1);
  }
  for (int l = d.L - 1; l >= 0; --l) {
    next = backward_block(l, train_layer(l), B, T, next);
    if (grads_ready)
      for (int t = static_cast<int>(Param::ln1w); t <= static_cast<int>(Param::fcprojb); ++t)
        report(static_cast<Param>(t), l);
  }
  be.encoder_backward(g.wte, g.wpe, a.dresidual, train_tokens_.get(), B, T, C);
  if (grads_ready) {
    report(Param::wte, -1);  // also written by the head's backward, at the start of the pass
    report(Param::wpe, -1);
  }
  last_B_ = 0;  // the dlogits are spent: a second backward() needs a new forward()
}

void Gpt::ensure_eval(std::size_t rows) {
  if (rows <= eval_rows_) return;
  const ModelDims& d = dims();
  const std::size_t C = d.C;
  // res, ln, qkv, atty, proj, fch, fch_gelu, then the logits chunk and the losses
  const std::size_t total =
      rows * C * (1 + 1 + 3 + 1 + 1 + 4 + 4) + std::size_t(kEvalChunk) * d.Vp + rows;
  eval_memory_ = DeviceBuffer<float>(backend_, total);
  eval_tokens_ = DeviceBuffer<int>(backend_, rows);
  eval_targets_ = DeviceBuffer<int>(backend_, rows);
  eval_rows_ = rows;
}

Gpt::LayerActs Gpt::eval_layer(std::size_t rows) const {
  const std::size_t C = dims().C;
  float* res = eval_memory_.get();
  float* ln = res + rows * C;
  float* qkv = ln + rows * C;
  float* atty = qkv + rows * 3 * C;
  float* proj = atty + rows * C;
  float* fch = proj + rows * C;
  float* fch_gelu = fch + rows * 4 * C;
  // The residual stream is updated in place; nothing is saved for backward.
  // ln and fch_gelu keep their fp32 size whatever the storage (a bf16 tensor uses half of it).
  const TensorOut ln_t{ln, storage_}, fch_gelu_t{fch_gelu, storage_};
  // A bf16 qkv takes the first half of its region; the fp32 product before rounding goes to fch,
  // which the block writes only later.
  const TensorOut qkv_t{qkv, qkv_storage()};
  float* qkv_product = qkv_rounded_by_store() ? fch : nullptr;
  const TensorOut fch_t{fch, output_storage()};
  const TensorOut atty_t{atty, attention_out_storage()}, proj_t{proj, branch_output_storage()};
  return {ln_t, nullptr, nullptr, qkv_t, atty_t,     nullptr, proj_t,     res,
          ln_t, nullptr, nullptr, fch_t, fch_gelu_t, res,     qkv_product};
}

EvalSums Gpt::evaluate(const int* tokens, const int* targets, int B, int T) {
  check_batch(tokens, targets, B, T, B);
  const std::size_t N = std::size_t(B) * T;
  ensure_eval(N);
  Backend& be = backend_;
  const ModelDims& d = dims();
  const ParamTensors<float> p = layout_.carve(params_.get());
  const LayerActs a = eval_layer(eval_rows_);
  float* logits_at = static_cast<float*>(a.fch_gelu.data) + eval_rows_ * 4 * d.C;
  const TensorOut logits{logits_at, output_storage()};  // (kEvalChunk, Vp)
  float* losses = logits_at + std::size_t(kEvalChunk) * d.Vp;
  be.upload(eval_tokens_.get(), tokens, N * sizeof(int));
  be.upload(eval_targets_.get(), targets, N * sizeof(int));
  round_weights();

  be.encoder_forward(a.residual3, eval_tokens_.get(), p.wte, p.wpe, B, T, d.C);
  be.layernorm_forward(a.ln1, nullptr, nullptr, a.residual3, p.ln1w, p.ln1b, int(N), d.C);
  for (int l = 0; l < d.L; ++l) {
    // every layer's ln1 and the final LayerNorm share the eval buffer a.ln1
    const auto [w, b] = norm_after(p, l, d.L, d.C);
    forward_block(l, a.residual3, a, NextNorm{a.ln1, nullptr, nullptr, w, b}, B, T);
  }
  for (std::size_t r0 = 0; r0 < N; r0 += kEvalChunk) {
    const int rows = int(std::min<std::size_t>(kEvalChunk, N - r0));
    be.matmul_forward(logits, from(a.ln1, r0 * d.C), product_weight(p.wte), nullptr, rows, d.C,
                      d.Vp);
    be.classifier(logits, losses + r0, eval_targets_.get() + r0, 0.0f, nullptr, rows, d.V, d.Vp);
  }
  std::vector<float> host(N);
  be.download(host.data(), losses, N * sizeof(float));
  EvalSums sums;
  for (float x : host) sums.loss_sum += x;
  sums.tokens = count_targets(targets, N);
  return sums;
}

}  // namespace mixsim
