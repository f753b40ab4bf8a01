// The GPT-2 decoder (learned positions, pre-LayerNorm blocks, GELU MLP, output head tied to the
// token embedding), written once as calls on the Backend op interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "mixsim/backend/ops.hpp"
#include "mixsim/model/layout.hpp"
#include "mixsim/model/optimizer.hpp"

namespace mixsim {

// Summed token losses (nats) and the number of tokens scored: sums from shards add up exactly.
struct EvalSums {
  double loss_sum = 0.0;
  std::uint64_t tokens = 0;
  double mean() const { return tokens ? loss_sum / double(tokens) : 0.0; }
};

class Gpt {
 public:
  // Parameters are allocated now; gradients and training activations (for batches of up to
  // max_batch sequences of up to config.context tokens) on the first forward(), so that a model
  // used only for evaluation never holds them. Where the backend takes bf16 weight copies
  // (Backend::bf16_weight_copies), the first forward() or evaluate() also allocates the copy, 2
  // bytes a parameter (250 MB at GPT-2's size). `backend` must outlive the model. The tensors
  // that only matrix products read are stored as `activation_storage` says, by default as the
  // backend prefers (Backend::activation_storage). bf16 storage on a backend with fp32 products
  // is allowed, and changes the results by bf16's rounding (tests use it to see it happen).
  Gpt(const ModelConfig& config, Backend& backend, int max_batch,
      std::optional<DType> activation_storage = std::nullopt);
  ~Gpt();
  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  const ParamLayout& layout() const { return layout_; }
  const ModelDims& dims() const { return layout_.dims(); }
  Backend& backend() const { return backend_; }
  int max_batch() const { return max_batch_; }
  DType activation_storage() const { return storage_; }
  // qkv's storage: bf16 where the activation storage is bf16 and the backend's attention rounds
  // q, k and v to bf16 itself (Backend::attention_rounds_qkv), else fp32.
  DType qkv_storage() const;
  // The product outputs the model keeps past their first reader: the MLP's pre-activation (the
  // fc product, which the GELU and backward read) and its gradient, and the logits (with their
  // gradient in place): bf16 where the activation storage is bf16 and the backend's products
  // write bf16 outputs (Backend::bf16_product_outputs), else fp32.
  DType output_storage() const;
  // Attention's output and its gradient (which the projection's products and attention's
  // backward read): bf16 where the activation storage is bf16 and the backend asks for it
  // (Backend::attention_out_storage), else fp32.
  DType attention_out_storage() const;
  // The residual branches' ends (the projections' outputs that the residual add reads, and the
  // gradients of the LayerNorms' outputs that their backwards read): bf16 where the activation
  // storage is bf16 and the backend asks for it (Backend::branch_output_storage), else fp32.
  DType branch_output_storage() const;

  // (layout().total()) backend memory. The caller may write through it, so every call leaves the
  // bf16 weight copy (below) to be made again by the next forward pass.
  float* params() const {
    weights16_current_ = false;
    return params_.get();
  }
  float* grads();  // same layout; allocated on first use

  // One optimizer update of the parameters from grads() (AdamW::step), which also writes the
  // bf16 weight copy where the backend takes one (Backend::adamw's params16), so that the forward
  // passes until the next update (a step's micro-batches, an evaluation) need not make it.
  StepStats update(AdamW& optimizer, double lr, const OptimConfig& config);

  // Fresh parameters from `seed`: normal(0, 0.02), residual projections scaled by
  // 1/sqrt(2 n_layer), biases 0, LayerNorm weights 1, padded rows of wte 0.
  void init(std::uint64_t seed);
  void set_params(std::span<const float> host);  // host buffer of layout().total() floats
  void get_params(std::span<float> host) const;

  // Training micro-step, part 1: the mean loss over the positions whose target is >= 0.
  // tokens, targets: host arrays (B,T). The gradient of grad_scale * loss is prepared for
  // backward() (e.g. grad_scale = 1/accumulation steps).
  float forward(const int* tokens, const int* targets, int B, int T, float grad_scale = 1.0f);
  // Part 2: adds the gradient of the last forward() to grads() (parameters accumulate).
  // `grads_ready`, when given, is called with each part of grads() as soon as no later op of the
  // pass writes it (the final LayerNorm's, then every layer's tensors from the last layer to the
  // first, then the embeddings'), in the same order on every call: for starting gradient sums
  // while the pass goes on (GradientBuckets).
  using GradsReady = std::function<void(std::span<float>)>;
  void backward(const GradsReady& grads_ready = {});
  void zero_grad();

  // Forward only, with no activations kept for backward: summed losses over the positions whose
  // target is >= 0 (negative targets are skipped: a short last window is scored exactly).
  // Any B >= 1 (buffers grow to fit), T <= context.
  EvalSums evaluate(const int* tokens, const int* targets, int B, int T);

 private:
  bool qkv_rounded_by_store() const;
  struct Activations;
  struct LayerActs;
  void check_batch(const int* tokens, const int* targets, int B, int T, int maxB) const;
  std::size_t count_targets(const int* targets, std::size_t n) const;
  void ensure_training();
  void ensure_eval(std::size_t rows);
  LayerActs train_layer(int l) const;  // per-layer stride: max_batch x context rows
  LayerActs eval_layer(std::size_t rows) const;
  struct NextNorm;  // the LayerNorm that reads a block's output (the next ln1, or lnf)
  // One block, from its ln1 (already formed from `residual`) to residual3, and the LayerNorm of
  // residual3 that follows it, fused with the last residual add.
  void forward_block(int l, const float* residual, const LayerActs& a, const NextNorm& next, int B,
                     int T);
  // Where the backend takes bf16 weights (Backend::bf16_weight_copies): rounds all parameters
  // into weights16_ at the start of a forward pass (forward(), evaluate()) unless the copy is
  // current (weights16_current_), so that a copy is never older than the parameters it was made
  // from; backward() uses the copy of the last forward() or evaluate() (the parameters do not
  // change between a forward() and its backward(): the activations backward() reads are from that
  // forward).
  void round_weights();
  // weights16_, allocated on first use; null where the backend takes no bf16 weights.
  std::uint16_t* weight_copy();
  // The weight a product takes: its bf16 copy where round_weights() makes them, else w itself.
  TensorIn product_weight(const float* w) const;
  // The bias of a product into `out`: with a bf16 out, its bf16 copy where round_weights() makes
  // them (the rounding matmul_forward would make of b: the same result, without a rounding pass
  // a product), else b itself.
  TensorIn product_bias(const float* b, TensorOut out) const;
  // What a projection's backward takes as its output gradient when that is the residual stream's
  // gradient (dresidual), as the LayerNorm backward before it left it: dresidual itself and the
  // bias gradient to sum it into, or where the backend fed it
  // (Backend::layernorm_backward_feeding) its bf16 copy or dresidual, and no bias gradient (made
  // already).
  struct ProductGrad {
    TensorIn dout;
    float* dbias;
  };
  // layernorm_backward into dresidual (+=), for the projection whose bias gradient is
  // product_dbias (null where no projection takes dresidual next: plain layernorm_backward).
  ProductGrad layernorm_backward_to(float* dweight, float* dbias, TensorIn dout, const float* inp,
                                    const float* weight, const float* mean, const float* rstd,
                                    int N, int C, float* product_dbias);
  // One block's backward, from its fcproj (which takes `fcproj`) to its ln1; returns what the
  // block below's fcproj takes.
  ProductGrad backward_block(int l, const LayerActs& a, int B, int T, const ProductGrad& fcproj);

  ParamLayout layout_;
  Backend& backend_;
  int max_batch_;
  DType storage_;
  DeviceBuffer<float> params_;
  DeviceBuffer<float> grads_;
  DeviceBuffer<std::uint16_t> weights16_;  // bf16 copy of params_ (round_weights); else empty
  // Whether weights16_ holds the rounding of params_ as they are: set where round_weights() or
  // update() wrote it, cleared by whatever may change params_ (params(), init(), set_params()).
  mutable bool weights16_current_ = false;
  DeviceBuffer<char> acts_memory_;         // training activations, one allocation
  DeviceBuffer<float> eval_memory_;        // evaluation activations, grown as needed
  DeviceBuffer<int> train_tokens_;         // (max_batch, context): kept for backward()
  DeviceBuffer<int> train_targets_;
  DeviceBuffer<int> eval_tokens_;  // (eval_rows_)
  DeviceBuffer<int> eval_targets_;
  std::size_t eval_rows_ = 0;
  std::unique_ptr<Activations> acts_;
  int last_B_ = 0, last_T_ = 0;  // shape of the forward() that backward() differentiates
};

}  // namespace mixsim
