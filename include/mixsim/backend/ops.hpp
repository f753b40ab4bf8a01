// The op set the model is written over: every tensor operation of GPT-2 training, evaluation and
// model averaging, as calls on an abstract Backend (the CPU and CUDA backends implement it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "mixsim/core/error_types.hpp"

namespace mixsim {

// Settings of one AdamW update, computed on the host by the optimizer.
struct AdamWArgs {
  float lr = 0.f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.f;  // decoupled: p -= lr * weight_decay * p; 0 for biases and LayerNorm
  float bias_correction1 = 1.f;  // 1 - beta1^t
  float bias_correction2 = 1.f;  // 1 - beta2^t
  float grad_scale = 1.f;        // the gradient is multiplied by this first (clipping)
};

// How a tensor's elements are stored: fp32, or bf16 (the fp32 value rounded to nearest even to
// bf16's 8 significant bits, 16 bits each; core/bf16.hpp). Only the tensors that nothing but
// matrix products read may be bf16 (LayerNorm outputs, the GELU's output, dlogits, and qkv where
// attention reads it only rounded to bf16: Backend::attention_rounds_qkv): in a backend whose
// products round their operands to bf16 anyway, storing them rounded changes no result and
// halves their memory and traffic (Backend::activation_storage).
enum class DType : std::uint8_t { fp32, bf16 };

// A tensor an op reads or writes, with its storage type; a float* converts to an fp32 one.
struct TensorIn {
  const void* data = nullptr;
  DType type = DType::fp32;
  TensorIn() = default;
  TensorIn(std::nullptr_t) {}            // NOLINT: a null tensor, as a null pointer
  TensorIn(const float* p) : data(p) {}  // NOLINT: fp32, implicitly
  TensorIn(const void* p, DType t) : data(p), type(t) {}
};
struct TensorOut {
  void* data = nullptr;
  DType type = DType::fp32;
  TensorOut() = default;
  TensorOut(std::nullptr_t) {}      // NOLINT
  TensorOut(float* p) : data(p) {}  // NOLINT
  TensorOut(void* p, DType t) : data(p), type(t) {}
  operator TensorIn() const { return {data, type}; }  // NOLINT: what was written is read
};

// Bytes per element of a tensor of this type.
inline std::size_t element_bytes(DType type) {
  return type == DType::bf16 ? 2 : sizeof(float);
}

// Whether the byte ranges [a, a + na) and [b, b + nb) share a byte (the ops' aliasing checks).
inline bool bytes_overlap(const void* a, std::size_t na, const void* b, std::size_t nb) {
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return x < y + nb && y < x + na;
}

// Conventions of every op:
// - Pointers are backend memory (host for cpu, device for cuda), from Backend::allocate.
//   Arguments are ordered outputs first, then inputs, then dimensions: op(out..., in..., dims).
// - Dimension letters: B batch, T sequence, C channels, NH heads, HS = C / NH, V vocabulary,
//   Vp padded vocabulary (the row count of wte), N rows (B*T), OC output channels.
// - Gradient semantics: gradients of PARAMETERS are accumulated (+=), so that micro-batches add
//   up; gradients of ACTIVATIONS are assigned (=), except layernorm_backward's dinp, which is
//   accumulated because it feeds the residual stream (one dresidual buffer for all layers).
// - Tensors passed as TensorIn/TensorOut may be fp32 or bf16 in any backend; every other
//   pointer is fp32.
// - Ops run in order on one stream; results are deterministic: the same inputs and thread count
//   give bit-identical outputs (no reduction order depends on scheduling).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // ---- memory (bytes); allocate never returns null and throws Error when out of memory
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void deallocate(void* ptr) noexcept = 0;
  virtual void upload(void* dst, const void* host_src, std::size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, std::size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;
  virtual void zero(void* ptr, std::size_t bytes) = 0;
  virtual void synchronize() = 0;
  // How the model should store the tensors that only matrix products read: bf16 in cpu-bf16 and
  // cuda-bf16 unless the environment sets MIXSIM_BF16_ACTIVATIONS=0 at construction (results
  // unchanged: the products round them to bf16 anyway), fp32 otherwise.
  virtual DType activation_storage() const { return DType::fp32; }
  // Whether attention (forward and backward) reads q, k and v only rounded to bf16 for heads of
  // this shape (cpu-bf16 and cuda-bf16 with tensor-core attention), so that qkv may be stored in
  // bf16; attention_forward and attention_backward accept a bf16 qkv only where this is true.
  virtual bool attention_rounds_qkv(int /*C*/, int /*NH*/) const { return false; }
  // Whether the model should have products write bf16 outputs where it stores bf16 anyway (the
  // qkv that attention rounds itself, instead of an fp32 product rounded by store(), and its
  // gradient, which attention_backward then writes in bf16; the MLP's pre-activation and its
  // gradient; the logits): cpu-bf16 and cuda-bf16 unless the environment sets
  // MIXSIM_BF16_OUTPUTS=0 at construction (biases are then rounded to bf16 before they are added,
  // see matmul_forward).
  virtual bool bf16_product_outputs() const { return false; }
  // Whether the model hands the matrix products bf16 weights, rounded from its fp32 parameters
  // once per forward pass (store()), where the products would round each weight at each use:
  // only backends whose products round their weight operands to bf16 anyway, so that no result
  // changes (cpu-bf16 and cuda-bf16, unless the environment sets MIXSIM_BF16_WEIGHTS=0 at
  // construction).
  virtual bool bf16_weight_copies() const { return false; }
  // How the model should store attention's output and its gradient (the projection's dinp), which
  // the projection's products and attention_backward read: bf16 in cpu-bf16 and cuda-bf16 with
  // bf16 activation storage where the environment sets MIXSIM_BF16_ATTENTION_OUT=1 at
  // construction (an opt-in: the products and attention's backward round them anyway, so only
  // D = dout . out changes, now the sum over the rounded values, as flash attention takes it),
  // fp32 otherwise.
  virtual DType attention_out_storage() const { return DType::fp32; }
  // How the model should store what the residual branches hand across their ends: the two
  // projections' outputs that the residual add reads (attproj, fcproj; the products' bf16 out),
  // and the input gradients of the products after a LayerNorm (qkv, fc and the tied head: the
  // products' bf16 dinp) that its backward reads. bf16 in cpu-bf16 and cuda-bf16 where the
  // environment sets MIXSIM_BF16_BRANCH_OUTPUTS=1 at construction (an opt-in: as autocast's linear
  // layers return bf16 for the fp32 residual add and LayerNorm to widen, so every product of the
  // model then writes bf16), fp32 otherwise. This one changes the results: the values are rounded
  // where nothing rounded them before.
  virtual DType branch_output_storage() const { return DType::fp32; }
  // dst = src, stored as dst's type says (bf16: rounded to nearest even). dst and src must not
  // overlap.
  virtual void store(TensorOut dst, const float* src, std::size_t n) = 0;

  // ---- embedding: out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
  virtual void encoder_forward(float* out,                          // (B,T,C)
                               const int* tokens,                   // (B,T)
                               const float* wte, const float* wpe,  // (Vp,C), (>=T,C)
                               int B, int T, int C) = 0;
  virtual void encoder_backward(float* dwte, float* dwpe,              // +=
                                const float* dout, const int* tokens,  // (B,T,C), (B,T)
                                int B, int T, int C) = 0;

  // ---- layer normalisation over C; mean and rstd (N) are saved for backward (nullable)
  virtual void layernorm_forward(TensorOut out, float* mean, float* rstd,  // (N,C), (N), (N)
                                 const float* inp,                         // (N,C)
                                 const float* weight, const float* bias,   // (C), (C)
                                 int N, int C) = 0;
  // dout may be bf16 (branch_output_storage; widened, exact).
  virtual void layernorm_backward(float* dinp,                           // (N,C) +=
                                  float* dweight, float* dbias,          // (C) +=
                                  TensorIn dout, const float* inp,       // (N,C)
                                  const float* weight,                   // (C)
                                  const float* mean, const float* rstd,  // (N)
                                  int N, int C) = 0;
  // Whether layernorm_backward_feeding runs here (MIXSIM_LAYERNORM_FEEDS_PRODUCT=1, an opt-in):
  // the model then asks it for the LayerNorms whose dinp, the residual stream's gradient, is the
  // output gradient of the projection whose backward comes next.
  virtual bool layernorm_feeds_products() const { return false; }
  // layernorm_backward, then what the next projection's backward would make of the updated dinp
  // as its dout, in the same pass where the backend can: the sums of dinp's columns added into
  // product_dbias (+=, (C); as matmul_backward sums an fp32 dout into its dbias), and, where the
  // products take bf16 operands, dinp rounded to bf16 into copy (N,C). Returns the dout that
  // product's backward then takes (copy, or dinp itself), with a null dbias. Only where
  // layernorm_feeds_products(); the default throws.
  virtual TensorIn layernorm_backward_feeding(float* /*dinp*/, float* /*dweight*/, float* /*dbias*/,
                                              TensorIn /*dout*/, const float* /*inp*/,
                                              const float* /*weight*/, const float* /*mean*/,
                                              const float* /*rstd*/, int /*N*/, int /*C*/,
                                              float* /*product_dbias*/, TensorOut /*copy*/) {
    throw Error(std::string(name()) + ": layernorm_backward_feeding is not run here");
  }

  // ---- out = inp @ weight^T + bias (bias nullable). A bf16 out (bf16 precision only) is the
  // fp32 result with the bias rounded to bf16 before it is added (as cuBLASLt's bias epilogue
  // takes it with a bf16 output, and as autocast does), then rounded to nearest even. The products'
  // weights, like their inputs, may be bf16 (bf16_weight_copies): used as they are by bf16
  // products, widened (exact) by fp32 ones. So may the bias, with a bf16 out only: it is then
  // that rounding, made already (the model's bf16 copy), and the result is the same as from the
  // fp32 bias; a bf16 bias with an fp32 out is an error (it would change the sum).
  virtual void matmul_forward(TensorOut out,                   // (N,OC)
                              TensorIn inp,                    // (N,C)
                              TensorIn weight, TensorIn bias,  // (OC,C), (OC)
                              int N, int C, int OC) = 0;
  // dinp = dout @ weight (assigned; nullable to skip; a bf16 one, bf16 precision only, is the fp32
  // product rounded); dweight, dbias += (dbias nullable; the bias gradient sums dout as it is
  // stored, in fp32 sums).
  virtual void matmul_backward(TensorOut dinp,                 // (N,C)
                               float* dweight, float* dbias,   // (OC,C), (OC)
                               TensorIn dout,                  // (N,OC)
                               TensorIn inp, TensorIn weight,  // (N,C), (OC,C)
                               int N, int C, int OC) = 0;

  // ---- causal self-attention; qkv rows hold q, k, v of all heads: [q(C) k(C) v(C)].
  // Only the log-sum-exp of each row is saved (O(T) memory); backward recomputes the scores.
  // A bf16 out is the fp32 one rounded (to nearest even); backward reads out as it is stored.
  virtual void attention_forward(TensorOut out, float* lse,         // (B,T,C), (B,NH,T)
                                 TensorIn qkv,                      // (B,T,3C)
                                 int B, int T, int C, int NH) = 0;  // lse nullable
  // A bf16 dqkv (only where attention_rounds_qkv) is the fp32 gradient rounded.
  virtual void attention_backward(TensorOut dqkv,              // (B,T,3C) assigned
                                  TensorIn dout,               // (B,T,C)
                                  TensorIn qkv, TensorIn out,  // (B,T,3C), (B,T,C)
                                  const float* lse,            // (B,NH,T)
                                  int B, int T, int C, int NH) = 0;

  // ---- GELU (tanh approximation, as GPT-2), of an fp32 or bf16 input (a bf16 one widened,
  // exact); backward: dinp = gelu'(inp) dout, rounded when dinp is bf16, and may run in place
  // (dinp == dout, both fp32)
  virtual void gelu_forward(TensorOut out, TensorIn inp, std::size_t n) = 0;
  virtual void gelu_backward(TensorOut dinp, TensorIn inp, const float* dout, std::size_t n) = 0;

  // ---- the MLP's two matmul + GELU pairs as one op each, which a backend may fuse (the CUDA
  // backend can, in cuBLASLt epilogues); the defaults run the ops above, one after the other.
  // The fc layer: pre = inp @ weight^T + bias (bias nullable), out = gelu(pre). A bf16 pre
  // (bf16 products only, with a bf16 out) is matmul_forward's bf16 out, and the GELU reads it as
  // stored: out = gelu(pre) from the rounded pre, which backward reads too.
  // The bias as matmul_forward's, with pre as its out.
  virtual void matmul_gelu_forward(TensorOut out, TensorOut pre,    // (N,OC), (N,OC)
                                   TensorIn inp,                    // (N,C)
                                   TensorIn weight, TensorIn bias,  // (OC,C), (OC)
                                   int N, int C, int OC) {
    if (pre.type == DType::bf16 && out.type != DType::bf16)
      throw Error(std::string(name()) + ": matmul_gelu_forward: a bf16 pre needs a bf16 out");
    matmul_forward(pre, inp, weight, bias, N, C, OC);
    gelu_forward(out, pre, std::size_t(N) * OC);
  }
  // The backward of the projection that follows it, matmul(gelu(pre)): matmul_backward with
  // inp = gelu(pre), then the gradient is taken through the GELU, so that dpre (assigned, not
  // nullable) is the gradient of pre. A bf16 dpre (with a bf16 pre) is gelu'(pre) times the fp32
  // product, rounded once; the default runs only the fp32 case, a backend that writes bf16 dpre
  // overrides it.
  virtual void gelu_matmul_backward(TensorOut dpre,                // (N,C)
                                    float* dweight, float* dbias,  // (OC,C), (OC) +=
                                    TensorIn dout,                 // (N,OC)
                                    TensorIn inp, TensorIn pre,    // (N,C): gelu(pre), pre
                                    TensorIn weight,               // (OC,C)
                                    int N, int C, int OC) {
    if (dpre.type != DType::fp32 || pre.type != DType::fp32)
      throw Error(std::string(name()) +
                  ": gelu_matmul_backward: dpre and pre of one type, and no bf16 dpre here");
    auto* d = static_cast<float*>(dpre.data);
    matmul_backward(d, dweight, dbias, dout, inp, weight, N, C, OC);
    gelu_backward(dpre, pre, d, std::size_t(N) * C);
  }

  // ---- out = a + b (out may alias a or b)
  virtual void residual_forward(float* out, const float* a, const float* b, std::size_t n) = 0;
  // ---- the residual add and the LayerNorm that reads its sum, as one op that a backend may fuse
  // (the CUDA backend does: one pass, the sum is not read back): residual = a + b (may alias a or
  // b), then layernorm_forward(out, mean, rstd, residual, ...). b, a branch's output, may be bf16
  // (branch_output_storage; widened, exact) where a backend overrides this; the default runs the
  // two ops, fp32 only.
  virtual void residual_layernorm_forward(float* residual,                          // (N,C)
                                          TensorOut out, float* mean, float* rstd,  // as layernorm
                                          const float* a, TensorIn b,               // (N,C)
                                          const float* weight, const float* bias,   // (C), (C)
                                          int N, int C) {
    if (b.type != DType::fp32)
      throw Error(std::string(name()) + ": residual_layernorm_forward: no bf16 addend here");
    residual_forward(residual, a, static_cast<const float*>(b.data), std::size_t(N) * C);
    layernorm_forward(out, mean, rstd, residual, weight, bias, N, C);
  }

  // ---- fused softmax + cross-entropy over the first V of Vp logits of each row.
  // losses[i] = -log softmax(logits[i,:V])[targets[i]], or 0 where targets[i] < 0 (skipped).
  // targets[i] < V is the caller's to ensure (the kernels index with it unchecked; the model's
  // Gpt::check_batch refuses a batch with a target outside the vocabulary).
  // Unless dlogits is null, dlogits = dloss * (softmax - onehot) on the first V entries and 0 on
  // the padding and on skipped rows (probabilities are never stored). Of fp32 logits: fp32
  // dlogits must be the logits themselves (overwritten in place); bf16 dlogits are a buffer of
  // their own (that does not overlap the logits), and the logits are left as they were. bf16
  // logits (a product's bf16 out) are read as stored, and their dlogits are bf16, in place.
  virtual void classifier(TensorOut logits, float* losses,  // (N,Vp), (N)
                          const int* targets,               // (N)
                          float dloss, TensorOut dlogits, int N, int V, int Vp) = 0;

  // ---- optimizer and buffer arithmetic over n floats
  // Unless params16 is null, it receives (n) the updated params rounded to bf16 (nearest even:
  // the bits store() writes), in the same pass: the model's bf16 weight copy (Gpt::update).
  virtual void adamw(float* params, float* m, float* v,  // (n) updated
                     const float* grads, std::size_t n, const AdamWArgs& args,
                     std::uint16_t* params16) = 0;
  // Sum of squares in double, summed in a fixed order (independent of the thread count).
  virtual double sum_squares(const float* x, std::size_t n) = 0;
  // out = sum_i weights[i] * inputs[i], summed in the order i = 0..k-1 (out may alias input 0).
  // `inputs` and `weights` are host arrays of k entries; inputs[i] are backend pointers.
  virtual void weighted_sum(float* out, const float* const* inputs, const float* weights, int k,
                            std::size_t n) = 0;
  virtual void scale(float* x, float alpha, std::size_t n) = 0;
};

// A typed RAII allocation of backend memory.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& backend, std::size_t count)
      : backend_(&backend),
        ptr_(count ? static_cast<T*>(backend.allocate(count * sizeof(T))) : nullptr),
        count_(count) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : backend_(o.backend_),
        ptr_(std::exchange(o.ptr_, nullptr)),
        count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = o.backend_;
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  void reset() noexcept {
    if (ptr_) backend_->deallocate(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }

 private:
  Backend* backend_ = nullptr;
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

// How the matrix products compute. Everything else (weights, activations, gradients, optimizer
// state, every other op) is fp32 in both, except attention in bf16 where the head size allows
// (bf16 tensor cores on the GPU, the same roundings in cpu-bf16; MIXSIM_TC_ATTENTION=0 keeps it
// fp32).
//   fp32: full fp32 products (cuBLAS without TF32; BLAS on the CPU).
//   bf16: both operands of each product are rounded to bf16 (to nearest even) and multiplied
//         with fp32 accumulation: tensor cores on the GPU ("cuda-bf16"); on the CPU
//         ("cpu-bf16") rounded copies through BLAS, the reference for cuda-bf16 (a product of
//         two bf16 values is exact in fp32, so only the order of the fp32 sums differs).
enum class MatmulPrecision { fp32, bf16 };

// The CPU backend (BLAS + OpenMP; threads: omp_get_max_threads()): "cpu", or "cpu-bf16" with
// bf16 products (and, unless the environment sets MIXSIM_TC_ATTENTION=0 at construction, the
// tensor-core attention's roundings).
std::unique_ptr<Backend> make_cpu_backend(MatmulPrecision precision = MatmulPrecision::fp32);
// A backend by name: "cpu", "cpu-bf16", or "cuda" / "cuda-bf16" (backend/cuda.hpp) in builds
// with CUDA, on the node-local rank's GPU. Throws UsageError for others.
std::unique_ptr<Backend> make_backend(std::string_view name);

}  // namespace mixsim
