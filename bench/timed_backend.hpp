// Shared by the CPU and GPU training benchmarks: a Backend wrapper that times every op, and the
// FLOP count of a training token. Depends only on the compute layers (mixsim_compute).
#pragma once

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/config.hpp"
#include "mixsim/core/timer.hpp"

namespace mixsim::bench {

// A Backend that forwards every op to another one and adds up the wall time of each op
// (--profile): where a step's time goes, without a profiler.
class TimedBackend final : public Backend {
 public:
  // sync: wait for the device after each op, so that asynchronous (GPU) ops are timed whole.
  explicit TimedBackend(Backend& inner, bool sync = false) : in_(inner), sync_(sync) {}
  std::string_view name() const override { return in_.name(); }
  void* allocate(std::size_t b) override { return in_.allocate(b); }
  void deallocate(void* p) noexcept override { in_.deallocate(p); }
  void upload(void* d, const void* s, std::size_t b) override { in_.upload(d, s, b); }
  void download(void* d, const void* s, std::size_t b) override { in_.download(d, s, b); }
  void copy(void* d, const void* s, std::size_t b) override { in_.copy(d, s, b); }
  void zero(void* p, std::size_t b) override {
    time("zero", [&] { in_.zero(p, b); });
  }
  void synchronize() override { in_.synchronize(); }
  DType activation_storage() const override { return in_.activation_storage(); }
  bool attention_rounds_qkv(int C, int NH) const override {
    return in_.attention_rounds_qkv(C, NH);
  }
  bool bf16_product_outputs() const override { return in_.bf16_product_outputs(); }
  bool bf16_weight_copies() const override { return in_.bf16_weight_copies(); }
  DType attention_out_storage() const override { return in_.attention_out_storage(); }
  DType branch_output_storage() const override { return in_.branch_output_storage(); }
  void store(TensorOut d, const float* s, std::size_t n) override {
    time("store", [&] { in_.store(d, s, n); });
  }
  void encoder_forward(float* o, const int* t, const float* a, const float* b, int B, int T,
                       int C) override {
    time("encoder_forward", [&] { in_.encoder_forward(o, t, a, b, B, T, C); });
  }
  void encoder_backward(float* a, float* b, const float* d, const int* t, int B, int T,
                        int C) override {
    time("encoder_backward", [&] { in_.encoder_backward(a, b, d, t, B, T, C); });
  }
  void layernorm_forward(TensorOut o, float* m, float* r, const float* i, const float* w,
                         const float* b, int N, int C) override {
    time("layernorm_forward", [&] { in_.layernorm_forward(o, m, r, i, w, b, N, C); });
  }
  void layernorm_backward(float* di, float* dw, float* db, TensorIn d, const float* i,
                          const float* w, const float* m, const float* r, int N, int C) override {
    count_bf16("layernorm_backward", d);
    time("layernorm_backward", [&] { in_.layernorm_backward(di, dw, db, d, i, w, m, r, N, C); });
  }
  bool layernorm_feeds_products() const override { return in_.layernorm_feeds_products(); }
  TensorIn layernorm_backward_feeding(float* di, float* dw, float* db, TensorIn d, const float* i,
                                      const float* w, const float* m, const float* r, int N, int C,
                                      float* pdb, TensorOut copy) override {
    count_bf16("layernorm_backward_feeding", d);
    TensorIn fed;
    time("layernorm_backward_feeding",
         [&] { fed = in_.layernorm_backward_feeding(di, dw, db, d, i, w, m, r, N, C, pdb, copy); });
    return fed;
  }
  void matmul_forward(TensorOut o, TensorIn i, TensorIn w, TensorIn b, int N, int C,
                      int OC) override {
    time(
        "matmul_forward", [&] { in_.matmul_forward(o, i, w, b, N, C, OC); }, product(N, C, OC, 1));
  }
  void matmul_backward(TensorOut di, float* dw, float* db, TensorIn d, TensorIn i, TensorIn w,
                       int N, int C, int OC) override {
    time(
        "matmul_backward", [&] { in_.matmul_backward(di, dw, db, d, i, w, N, C, OC); },
        product(N, C, OC, di.data ? 2 : 1));
  }
  void attention_forward(TensorOut o, float* l, TensorIn q, int B, int T, int C, int NH) override {
    time(
        "attention_forward", [&] { in_.attention_forward(o, l, q, B, T, C, NH); },
        attention(B, T, C, NH, 1));
  }
  void attention_backward(TensorOut dq, TensorIn d, TensorIn q, TensorIn o, const float* l, int B,
                          int T, int C, int NH) override {
    time(
        "attention_backward", [&] { in_.attention_backward(dq, d, q, o, l, B, T, C, NH); },
        attention(B, T, C, NH, 2));
  }
  void gelu_forward(TensorOut o, TensorIn i, std::size_t n) override {
    time("gelu_forward", [&] { in_.gelu_forward(o, i, n); });
  }
  void gelu_backward(TensorOut di, TensorIn i, const float* d, std::size_t n) override {
    time("gelu_backward", [&] { in_.gelu_backward(di, i, d, n); });
  }
  void matmul_gelu_forward(TensorOut o, TensorOut p, TensorIn i, TensorIn w, TensorIn b, int N,
                           int C, int OC) override {
    time(
        "matmul_gelu_forward", [&] { in_.matmul_gelu_forward(o, p, i, w, b, N, C, OC); },
        product(N, C, OC, 1));
  }
  void gelu_matmul_backward(TensorOut dp, float* dw, float* db, TensorIn d, TensorIn i, TensorIn p,
                            TensorIn w, int N, int C, int OC) override {
    time(
        "gelu_matmul_backward", [&] { in_.gelu_matmul_backward(dp, dw, db, d, i, p, w, N, C, OC); },
        product(N, C, OC, 2));
  }
  void residual_forward(float* o, const float* a, const float* b, std::size_t n) override {
    time("residual_forward", [&] { in_.residual_forward(o, a, b, n); });
  }
  void residual_layernorm_forward(float* res, TensorOut o, float* m, float* r, const float* a,
                                  TensorIn b, const float* w, const float* bias, int N,
                                  int C) override {
    count_bf16("residual_layernorm_forward", b);
    time("residual_layernorm_forward",
         [&] { in_.residual_layernorm_forward(res, o, m, r, a, b, w, bias, N, C); });
  }
  void classifier(TensorOut l, float* ls, const int* t, float d, TensorOut w, int N, int V,
                  int Vp) override {
    time("classifier", [&] { in_.classifier(l, ls, t, d, w, N, V, Vp); });
  }
  void adamw(float* p, float* m, float* v, const float* g, std::size_t n, const AdamWArgs& a,
             std::uint16_t* p16) override {
    time("adamw", [&] { in_.adamw(p, m, v, g, n, a, p16); });
  }
  double sum_squares(const float* x, std::size_t n) override {
    double r = 0;
    time("sum_squares", [&] { r = in_.sum_squares(x, n); });
    return r;
  }
  void weighted_sum(float* o, const float* const* in, const float* w, int k,
                    std::size_t n) override {
    in_.weighted_sum(o, in, w, k, n);
  }
  void scale(float* x, float a, std::size_t n) override { in_.scale(x, a, n); }

  void reset() {
    totals_.clear();
    calls_.clear();
    shapes_.clear();
  }
  // Whether `op` ran since the last reset (the tests ask which of two paths a model took), and
  // how many times.
  bool ran(const std::string& op) const { return calls(op) > 0; }
  std::size_t calls(const std::string& op) const {
    const auto it = calls_.find(op);
    return it == calls_.end() ? 0 : it->second;
  }
  // Calls of op that read a bf16 tensor where they may take either type: the LayerNorm ops' dout
  // or addend (Backend::branch_output_storage); for tests of what the model hands them.
  std::size_t bf16_calls(const std::string& op) const {
    const auto it = bf16_calls_.find(op);
    return it == bf16_calls_.end() ? 0 : it->second;
  }
  // Each op's time per step, then the products' and attention's by shape, slowest first, with
  // the rate of their useful flops.
  void print(int steps) const {
    for (const auto& [op, s] : totals_)
      std::printf("         %-26s %8.3f ms/step\n", op.c_str(), 1e3 * s / steps);
    std::vector<std::pair<std::string, Shaped>> by_time(shapes_.begin(), shapes_.end());
    std::sort(by_time.begin(), by_time.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    for (const auto& [what, t] : by_time)
      std::printf("           %-52s %8.3f ms/step %8.3f TFLOP/s\n", what.c_str(),
                  1e3 * t.seconds / steps, t.flops / t.seconds / 1e12);
  }

 private:
  // What one call is, beyond its op's name, and its useful flops.
  struct Shape {
    std::string what;
    double flops = 0;
  };
  // A matrix product (N,C) x (C,OC) in `passes` passes (forward 1; backward 2 with the input
  // gradient, else 1).
  static Shape product(int N, int C, int OC, int passes) {
    return {"N " + std::to_string(N) + ", C " + std::to_string(C) + " -> " + std::to_string(OC),
            2.0 * passes * N * double(C) * OC};
  }
  // Causal attention: q.k and p.v over half the keys on average, the backward twice the forward
  // (as bench::flops_per_token counts it).
  static Shape attention(int B, int T, int C, int NH, int passes) {
    return {"B " + std::to_string(B) + ", T " + std::to_string(T) + ", C " + std::to_string(C) +
                ", heads " + std::to_string(NH),
            2.0 * passes * B * double(T) * T * C};
  }
  struct Shaped {
    double seconds = 0, flops = 0;
  };

  // Counts a call of op that reads t, where t is bf16 (bf16_calls).
  void count_bf16(const char* op, TensorIn t) {
    if (t.type == DType::bf16) ++bf16_calls_[op];
  }
  template <class Fn>
  void time(const char* op, Fn&& fn, const Shape& shape = {}) {
    Stopwatch w;
    fn();
    if (sync_) in_.synchronize();
    const double s = w.seconds();
    totals_[op] += s;
    ++calls_[op];
    if (!shape.what.empty()) {
      Shaped& t = shapes_[std::string(op) + " " + shape.what];
      t.seconds += s;
      t.flops += shape.flops;
    }
  }
  Backend& in_;
  bool sync_;
  std::map<std::string, double> totals_;
  std::map<std::string, std::size_t> calls_;
  std::map<std::string, std::size_t> bf16_calls_;
  std::map<std::string, Shaped> shapes_;
};

// FLOPs of one training token: 6 per weight that enters a matrix product (2 forward, 4
// backward): per layer 12 C^2 matrix weights and 9 C biases, and the head tied to wte, V x C;
// plus causal attention: per layer and token, q.k and p.v over T/2 keys on average, 2 * 2 *
// (T/2) * C forward and twice that backward. LayerNorm, GELU, softmax and AdamW are not counted.
inline double flops_per_token(const ModelConfig& m) {
  const double L = m.n_layer, C = m.n_embd, T = m.context, V = m.vocab_size;
  const double weights = L * (12 * C * C + 9 * C) + V * C;
  return 6 * weights + 6 * L * T * C;
}

}  // namespace mixsim::bench
