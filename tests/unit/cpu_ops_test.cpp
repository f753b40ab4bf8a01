// The CPU kernels, op by op: central finite differences in double precision (the kernels are
// templated on the scalar type), the gradient semantics (parameters +=, activations =), the
// attention against a naive reference, and the float backend against the double kernels.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "mixsim/backend/cpu_kernels.hpp"
#include "mixsim/backend/ops.hpp"
#include "mixsim/core/rng.hpp"

namespace cpu = mixsim::cpu;
using Vec = std::vector<double>;

namespace {

Vec random_vec(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  mixsim::Rng rng(seed);
  Vec v(n);
  for (auto& x : v) x = scale * rng.normal();
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Compares `analytic` with central differences of `loss` over every element of `x`.
// In double, with eps = 1e-5 the truncation error (eps^2 * f''') and the rounding error
// (1e-16 / eps) are both below 1e-9 for these O(1) functions, so 1e-6 (relative to the larger
// of 1 and the gradient) leaves a wide margin while any wrong term in a gradient (O(0.01) or
// more) fails it.
void expect_gradient(const std::function<double()>& loss, Vec& x, const Vec& analytic,
                     const char* what, double tol = 1e-6) {
  ASSERT_EQ(x.size(), analytic.size());
  const double eps = 1e-5;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double plus = loss();
    x[i] = saved - eps;
    const double minus = loss();
    x[i] = saved;
    const double fd = (plus - minus) / (2 * eps);
    ASSERT_NEAR(analytic[i], fd, tol * std::max({1.0, std::abs(fd)})) << what << " element " << i;
  }
}

std::vector<float> to_float(const Vec& v) {
  return {v.begin(), v.end()};
}

// Sets the OpenMP thread count for a scope.
class Threads {
 public:
  explicit Threads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(saved_); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;

 private:
  int saved_;
};

}  // namespace

TEST(CpuOps, EncoderGradientAccumulates) {
  const int B = 2, T = 3, C = 4, Vp = 5;
  const std::vector<int> tokens = {1, 3, 1, 4, 1, 0};  // token 1 three times: rows receive sums
  Vec wte = random_vec(Vp * C, 1), wpe = random_vec(T * C, 2), r = random_vec(B * T * C, 3);
  auto loss = [&] {
    Vec out(B * T * C);
    cpu::encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    return dot(out, r);
  };
  Vec dwte(Vp * C, 0.5), dwpe(T * C, -0.25);  // parameter gradients accumulate onto these
  cpu::encoder_backward(dwte.data(), dwpe.data(), r.data(), tokens.data(), B, T, C);
  for (auto& g : dwte) g -= 0.5;
  for (auto& g : dwpe) g += 0.25;
  expect_gradient(loss, wte, dwte, "dwte");
  expect_gradient(loss, wpe, dwpe, "dwpe");
}

TEST(CpuOps, LayerNormGradients) {
  const int N = 5, C = 7;
  Vec inp = random_vec(N * C, 4, 2.0), w = random_vec(C, 5), b = random_vec(C, 6);
  Vec r = random_vec(N * C, 7);
  for (auto& x : inp) x += 0.5;  // a non-zero mean
  auto loss = [&] {
    Vec out(N * C);
    cpu::layernorm_forward<double>(out.data(), nullptr, nullptr, inp.data(), w.data(), b.data(), N,
                                   C);
    return dot(out, r);
  };
  Vec out(N * C), mean(N), rstd(N);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N,
                         C);
  // dinp accumulates (it feeds the residual stream), and so do dweight, dbias.
  Vec dinp(N * C, 1.0), dw(C, 2.0), db(C, 3.0);
  cpu::layernorm_backward(dinp.data(), dw.data(), db.data(), r.data(), inp.data(), w.data(),
                          mean.data(), rstd.data(), N, C);
  for (auto& g : dinp) g -= 1.0;
  for (auto& g : dw) g -= 2.0;
  for (auto& g : db) g -= 3.0;
  expect_gradient(loss, inp, dinp, "dinp");
  expect_gradient(loss, w, dw, "dweight");
  expect_gradient(loss, b, db, "dbias");
}

TEST(CpuOps, MatmulGradients) {
  const int N = 6, C = 5, OC = 4;
  Vec inp = random_vec(N * C, 8), w = random_vec(OC * C, 9), b = random_vec(OC, 10);
  Vec r = random_vec(N * OC, 11);
  auto loss = [&] {
    Vec out(N * OC);
    cpu::matmul_forward(out.data(), inp.data(), w.data(), b.data(), N, C, OC);
    return dot(out, r);
  };
  Vec dinp(N * C, 123.0), dw(OC * C, 1.0), db(OC, -1.0);  // dinp is assigned: 123 must vanish
  cpu::matmul_backward(dinp.data(), dw.data(), db.data(), r.data(), inp.data(), w.data(), N, C, OC);
  for (auto& g : dw) g -= 1.0;
  for (auto& g : db) g += 1.0;
  expect_gradient(loss, inp, dinp, "dinp");
  expect_gradient(loss, w, dw, "dweight");
  expect_gradient(loss, b, db, "dbias");
}

TEST(CpuOps, MatmulForwardMatchesDefinition) {
  const int N = 3, C = 4, OC = 2;
  Vec inp = random_vec(N * C, 12), w = random_vec(OC * C, 13), b = random_vec(OC, 14);
  Vec out(N * OC);
  cpu::matmul_forward(out.data(), inp.data(), w.data(), b.data(), N, C, OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b[o];
      for (int c = 0; c < C; ++c) s += inp[n * C + c] * w[o * C + c];
      EXPECT_NEAR(out[n * OC + o], s, 1e-12);  // a few double roundings of O(1) terms
    }
}

namespace {

// Naive causal attention with the full (T,T) score matrix per head.
Vec naive_attention(const Vec& qkv, int B, int T, int C, int NH) {
  const int HS = C / NH;
  Vec out(std::size_t(B) * T * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        const double* q = &qkv[(std::size_t(b) * T + t) * 3 * C + h * HS];
        std::vector<double> s(t + 1);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= t; ++j) {
          const double* k = &qkv[(std::size_t(b) * T + j) * 3 * C + C + h * HS];
          s[j] = 0;
          for (int d = 0; d < HS; ++d) s[j] += q[d] * k[d];
          s[j] /= std::sqrt(double(HS));
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j <= t; ++j) sum += (s[j] = std::exp(s[j] - mx));
        double* o = &out[(std::size_t(b) * T + t) * C + h * HS];
        for (int j = 0; j <= t; ++j) {
          const double* v = &qkv[(std::size_t(b) * T + j) * 3 * C + 2 * C + h * HS];
          for (int d = 0; d < HS; ++d) o[d] += s[j] / sum * v[d];
        }
      }
  return out;
}

}  // namespace

// T = 70 spans two query blocks of the kernel (64 rows each) and ragged 4x16 register tiles;
// HS = 16 runs the full register tiles too, HS = 4 only the ragged edge code.
TEST(CpuOps, AttentionMatchesNaiveReference) {
  for (const int C : {8, 32}) {
    const int B = 2, T = 70, NH = 2;
    const Vec qkv = random_vec(std::size_t(B) * T * 3 * C, 15, 1.5);
    Vec out(std::size_t(B) * T * C), lse(std::size_t(B) * NH * T);
    cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
    const Vec ref = naive_attention(qkv, B, T, C, NH);
    for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-12) << i;
    // Causality: changing the last position changes no output before it.
    Vec qkv2 = qkv;
    for (int c = 0; c < 3 * C; ++c) qkv2[(std::size_t(T) - 1) * 3 * C + c] += 1.0;
    Vec out2(out.size());
    cpu::attention_forward<double>(out2.data(), nullptr, qkv2.data(), B, T, C, NH);
    for (int i = 0; i < (T - 1) * C; ++i) ASSERT_EQ(out[i], out2[i]) << i;
  }
}

// T = 67 > 64: two query blocks; HS = 16: full register tiles and ragged edges.
TEST(CpuOps, AttentionGradient) {
  const int B = 1, T = 67, C = 16, NH = 1;
  Vec qkv = random_vec(std::size_t(B) * T * 3 * C, 16);
  const Vec r = random_vec(std::size_t(B) * T * C, 17);
  auto loss = [&] {
    Vec out(std::size_t(B) * T * C);
    cpu::attention_forward<double>(out.data(), nullptr, qkv.data(), B, T, C, NH);
    return dot(out, r);
  };
  Vec out(std::size_t(B) * T * C), lse(std::size_t(B) * NH * T);
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  Vec dqkv(qkv.size(), 99.0);  // assigned: the 99 must be overwritten everywhere
  cpu::attention_backward(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
  const Threads one(1);  // thousands of small forwards: thread wake-ups would dominate
  expect_gradient(loss, qkv, dqkv, "dqkv");
}

TEST(CpuOps, GeluGradientInPlace) {
  const std::size_t n = 50;
  Vec x = random_vec(n, 18, 3.0), r = random_vec(n, 19);
  auto loss = [&] {
    Vec out(n);
    cpu::gelu_forward(out.data(), x.data(), n);
    return dot(out, r);
  };
  Vec d = r;  // in place: dinp == dout
  cpu::gelu_backward(d.data(), x.data(), d.data(), n);
  expect_gradient(loss, x, d, "dgelu");
  // GELU(x) = x * Phi(x) ~ x for large x, ~0 for very negative x, and 0 at 0.
  Vec probe = {0.0, 10.0, -10.0}, out(3);
  cpu::gelu_forward(out.data(), probe.data(), 3);
  EXPECT_EQ(out[0], 0.0);
  EXPECT_NEAR(out[1], 10.0, 1e-9);
  EXPECT_NEAR(out[2], 0.0, 1e-9);
}

TEST(CpuOps, ClassifierGradientSkipsAndPadding) {
  const int N = 4, V = 5, Vp = 8;
  Vec logits = random_vec(N * Vp, 20, 2.0);
  const std::vector<int> targets = {2, 0, -1, 4};  // row 2 is skipped
  const double dloss = 0.25;
  auto loss = [&] {
    Vec work = logits, losses(N);
    cpu::classifier(work.data(), losses.data(), targets.data(), 0.0, false, N, V, Vp);
    double s = 0;
    for (double l : losses) s += dloss * l;
    return s;
  };
  Vec d = logits, losses(N);
  cpu::classifier(d.data(), losses.data(), targets.data(), dloss, true, N, V, Vp);
  EXPECT_EQ(losses[2], 0.0);
  for (int j = 0; j < Vp; ++j) EXPECT_EQ(d[2 * Vp + j], 0.0) << "skipped row gets no gradient";
  for (int n = 0; n < N; ++n)
    for (int j = V; j < Vp; ++j) EXPECT_EQ(d[n * Vp + j], 0.0) << "padding gets no gradient";
  // The finite differences cover the padded logits too: the loss must not depend on them.
  expect_gradient(loss, logits, d, "dlogits");
  // The loss itself: -log softmax(target) of row 0.
  double mx = -1e300, sum = 0;
  for (int j = 0; j < V; ++j) mx = std::max(mx, logits[j]);
  for (int j = 0; j < V; ++j) sum += std::exp(logits[j] - mx);
  EXPECT_NEAR(losses[0], std::log(sum) + mx - logits[2], 1e-12);
}

TEST(CpuOps, ResidualAndScale) {
  auto be = mixsim::make_cpu_backend();
  std::vector<float> a = {1.5f, -2.0f, 3.0f}, b = {0.5f, 2.0f, -1.0f};
  be->residual_forward(a.data(), a.data(), b.data(), 3);  // in place: out aliases a
  EXPECT_EQ(a, (std::vector<float>{2.0f, 0.0f, 2.0f}));
  be->scale(a.data(), -0.5f, 3);
  EXPECT_EQ(a, (std::vector<float>{-1.0f, -0.0f, -1.0f}));
}

TEST(CpuOps, SumSquaresIsExactAndThreadIndependent) {
  const std::size_t n = 100003;  // several blocks and a ragged end
  std::vector<float> x = to_float(random_vec(n, 21));
  double ref = 0;
  for (float v : x) ref += double(v) * double(v);
  double one = 0, two = 0;
  {
    const Threads t(1);
    one = cpu::sum_squares(x.data(), n);
  }
  {
    const Threads t(2);
    two = cpu::sum_squares(x.data(), n);
  }
  EXPECT_EQ(one, two);
  EXPECT_NEAR(one, ref, 1e-9 * ref);  // both sum the same squares in double
}

TEST(CpuOps, WeightedSumIsTheWeightedMean) {
  auto backend = mixsim::make_cpu_backend();
  const std::size_t n = 5000;
  std::vector<float> a(n), b(n), c(n);
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = float(i);
    b[i] = 2.0f;
    c[i] = -float(i) * 0.5f;
  }
  const float* inputs[] = {a.data(), b.data(), c.data()};
  const float w[] = {0.25f, 0.25f, 0.5f};
  std::vector<float> out(n);
  backend->weighted_sum(out.data(), inputs, w, 3, n);
  // 0.25 i + 0.5 - 0.25 i = 0.5: every term is exact in float.
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 0.5f) << i;
  backend->weighted_sum(a.data(), inputs, w, 3, n);  // out aliasing the first input
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(a[i], 0.5f) << i;
}

// Seven inputs exercise the first-input pass, one four-input pass and two single-input passes;
// lengths of three 64 KiB blocks plus a tail, and of 17 MiB plus a tail (beyond 16 MiB the output
// is written with streaming stores), exercise the blocking and both store paths. Inputs are small
// integers and weights powers of two, so every product and partial sum is exact in float and any
// difference from the reference is a wrong element, not rounding.
TEST(CpuOps, WeightedSumOfManyInputsOverSeveralBlocks) {
  auto backend = mixsim::make_cpu_backend();
  const int k = 7;
  const float w[k] = {0.5f, 0.25f, 0.125f, 0.0625f, 0.03125f, 2.0f, 4.0f};
  for (const std::size_t n : {std::size_t{3 * 16384 + 17}, std::size_t{(17u << 20) / 4 + 5}}) {
    std::vector<std::vector<float>> in(k, std::vector<float>(n));
    std::vector<const float*> ptr;
    for (int j = 0; j < k; ++j) {
      for (std::size_t i = 0; i < n; ++i) in[j][i] = float((i * 31 + std::size_t(j) * 7) % 97);
      ptr.push_back(in[j].data());
    }
    // Offset by one float, so the streaming path also meets an unaligned start.
    std::vector<float> out_buffer(n + 1, -1.0f);
    float* out = out_buffer.data() + 1;
    backend->weighted_sum(out, ptr.data(), w, k, n);
    for (std::size_t i = 0; i < n; ++i) {
      float ref = 0;
      for (int j = 0; j < k; ++j) ref += w[j] * in[j][i];
      ASSERT_EQ(out[i], ref) << "n " << n << ", element " << i;
    }
    EXPECT_EQ(out_buffer[0], -1.0f) << "wrote before the output";
  }
}

TEST(CpuOps, FastExpIsAccurate) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double ref = std::exp(double(x));
    worst = std::max(worst, std::abs(double(cpu::fast_exp(x)) - ref) / ref);
  }
  // Float's own rounding is 6e-8; the polynomial plus range reduction stay within a few ulp.
  EXPECT_LT(worst, 5e-7);
  EXPECT_GT(cpu::fast_exp(1000.0f), 1e38f);  // clamped, not inf
  EXPECT_GT(cpu::fast_exp(-1000.0f), 0.0f);
}

// The float backend runs the same kernels as the double checks above, in float: its results
// must agree with double to float precision (relative 1e-4 after a few dozen roundings).
TEST(CpuOps, FloatBackendAgreesWithDoubleKernels) {
  auto be = mixsim::make_cpu_backend();
  const int B = 2, T = 70, C = 64, NH = 2, N = B * T;  // HS = 32: the vector tiles in float
  const Vec qkv = random_vec(std::size_t(N) * 3 * C, 22);
  const Vec dout = random_vec(std::size_t(N) * C, 23);
  Vec out(N * C), lse(B * NH * T), dqkv(qkv.size());
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C,
                          NH);
  std::vector<float> fqkv = to_float(qkv), fdout = to_float(dout), fout(out.size()),
                     flse(lse.size()), fdqkv(qkv.size());
  be->attention_forward(fout.data(), flse.data(), fqkv.data(), B, T, C, NH);
  be->attention_backward(fdqkv.data(), fdout.data(), fqkv.data(), fout.data(), flse.data(), B, T, C,
                         NH);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(fout[i], out[i], 1e-4) << i;
  for (std::size_t i = 0; i < dqkv.size(); ++i) ASSERT_NEAR(fdqkv[i], dqkv[i], 1e-4) << i;

  const Vec x = random_vec(1000, 24, 3.0);
  Vec gd(1000), gb(1000);
  std::vector<float> fx = to_float(x), fg(1000), fgb(1000), ones(1000, 1.0f);
  const Vec dones(1000, 1.0);
  cpu::gelu_forward(gd.data(), x.data(), 1000);
  cpu::gelu_backward(gb.data(), x.data(), dones.data(), 1000);
  be->gelu_forward(fg.data(), fx.data(), 1000);
  be->gelu_backward(fgb.data(), fx.data(), ones.data(), 1000);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_NEAR(fg[i], gd[i], 1e-5 * std::max(1.0, std::abs(gd[i]))) << i;
    ASSERT_NEAR(fgb[i], gb[i], 1e-5) << i;
  }
}

// The MLP's fused pairs as the CPU backend runs them (Backend's defaults: the two ops in turn).
// Forward: pre is exactly matmul_forward's result and out exactly gelu_forward(pre). Backward:
// dpre is the gradient of r . matmul(gelu(pre)) with respect to pre (central differences in
// double on the double kernels, then the float op against them: sums of <= 12 O(1) terms in
// float, 1e-5 is ~50 ulps), while dweight and dbias accumulate onto what they held.
TEST(CpuOps, MatmulGeluPairsAreTheOpsInTurn) {
  auto be = mixsim::make_cpu_backend();
  const int N = 7, C = 12, OC = 5;  // the projection maps C = 12 hidden units to OC = 5
  const Vec x = random_vec(N * 8, 30), w1 = random_vec(C * 8, 31), b1 = random_vec(C, 32);
  std::vector<float> fx = to_float(x), fw1 = to_float(w1), fb1 = to_float(b1);
  std::vector<float> out(N * C), pre(N * C), ref_pre(N * C), ref_out(N * C);
  be->matmul_gelu_forward(out.data(), pre.data(), fx.data(), fw1.data(), fb1.data(), N, 8, C);
  be->matmul_forward(ref_pre.data(), fx.data(), fw1.data(), fb1.data(), N, 8, C);
  be->gelu_forward(ref_out.data(), ref_pre.data(), ref_pre.size());
  EXPECT_EQ(pre, ref_pre);
  EXPECT_EQ(out, ref_out);

  Vec h = random_vec(N * C, 33), w = random_vec(OC * C, 34), r = random_vec(N * OC, 35);
  auto loss = [&] {
    Vec g(h.size()), y(N * OC);
    cpu::gelu_forward(g.data(), h.data(), h.size());
    cpu::matmul_forward(y.data(), g.data(), w.data(), static_cast<const double*>(nullptr), N, C,
                        OC);
    return dot(y, r);
  };
  Vec g(h.size()), dh(h.size()), dw(OC * C, 0.0), db(OC, 0.0);
  cpu::gelu_forward(g.data(), h.data(), h.size());
  cpu::matmul_backward(dh.data(), dw.data(), db.data(), r.data(), g.data(), w.data(), N, C, OC);
  cpu::gelu_backward(dh.data(), h.data(), dh.data(), h.size());
  expect_gradient(loss, h, dh, "dpre");

  std::vector<float> fh = to_float(h), fg = to_float(g), fw = to_float(w), fr = to_float(r);
  std::vector<float> fdpre(h.size(), 99.f), fdw(OC * C, 1.f), fdb(OC, -1.f);  // dpre: assigned
  be->gelu_matmul_backward(fdpre.data(), fdw.data(), fdb.data(), fr.data(), fg.data(), fh.data(),
                           fw.data(), N, C, OC);
  for (std::size_t i = 0; i < dh.size(); ++i) ASSERT_NEAR(fdpre[i], dh[i], 1e-5) << i;
  for (std::size_t i = 0; i < dw.size(); ++i) ASSERT_NEAR(fdw[i] - 1.f, dw[i], 1e-5) << i;
  for (int i = 0; i < OC; ++i) ASSERT_NEAR(fdb[i] + 1.f, db[i], 1e-5) << i;
}
