// The GPT model on the CPU backend: layout, initialisation, the loss and its gradient, training
// (overfitting, determinism, gradient accumulation), the padded vocabulary and evaluation.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "mixsim/core/error.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/model/optimizer.hpp"

using namespace mixsim;

namespace {

// Small enough for seconds-long tests, with every feature: 2 layers, 2 heads, padded vocabulary
// (V = 70 -> Vp = 128).
ModelConfig test_config() {
  return {2, 2, 16, 12, 70};
}

struct Batch {
  std::vector<int> tokens, targets;
};

Batch random_batch(int B, int T, int V, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<int> seq(std::size_t(B) * T + 1);
  for (auto& t : seq) t = int(rng.below(std::uint64_t(V)));
  return {{seq.begin(), seq.end() - 1}, {seq.begin() + 1, seq.end()}};
}

// Sets the OpenMP thread count for a scope. The tests run on one thread unless they are about
// threads: under `ctest -j` two tests with two threads each on two cores wait on each other at
// every barrier, which turns a second into a minute.
class Threads {
 public:
  explicit Threads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(saved_); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;

 private:
  int saved_;
};

class GptTest : public ::testing::Test {
 protected:
  Threads one_{1};
};

std::vector<float> host_params(const Gpt& m) {
  std::vector<float> p(m.layout().total());
  m.get_params(p);
  return p;
}

std::vector<float> host_grads(Gpt& m) {
  std::vector<float> g(m.layout().total());
  m.backend().download(g.data(), m.grads(), g.size() * sizeof(float));
  return g;
}

}  // namespace

TEST(GptLayout, CanonicalOrderShapesAndDecay) {
  const ParamLayout layout(ModelConfig{4, 4, 128, 64, 257});
  const char* names[] = {"wte",      "wpe",      "ln1w", "ln1b", "qkvw", "qkvb",
                         "attprojw", "attprojb", "ln2w", "ln2b", "fcw",  "fcb",
                         "fcprojw",  "fcprojb",  "lnfw", "lnfb"};
  ASSERT_EQ(layout.tensors().size(), 16u);
  std::size_t offset = 0;
  for (int i = 0; i < 16; ++i) {
    const TensorInfo& t = layout.tensors()[i];
    EXPECT_EQ(t.name, names[i]);
    EXPECT_EQ(t.offset, offset) << t.name << ": tensors are contiguous, in order";
    offset += t.numel;
  }
  EXPECT_EQ(layout.total(), offset);
  EXPECT_EQ(layout.dims().Vp, 320);  // 257 padded to a multiple of 64
  EXPECT_EQ(layout.find("wte").shape, (std::vector<std::size_t>{320, 128}));
  EXPECT_EQ(layout.find("qkvw").shape, (std::vector<std::size_t>{4, 384, 128}));
  EXPECT_EQ(layout.find("fcprojw").shape, (std::vector<std::size_t>{4, 128, 512}));
  for (const auto& t : layout.tensors()) {
    const bool matrix = t.name == "wte" || t.name == "wpe" || t.name == "qkvw" ||
                        t.name == "attprojw" || t.name == "fcw" || t.name == "fcprojw";
    EXPECT_EQ(t.decay, matrix) << t.name;
  }
  EXPECT_THROW(layout.find("nope"), Error);
  EXPECT_THROW(ParamLayout(ModelConfig{1, 3, 16, 8, 10}), UsageError);  // 16 % 3 != 0
}

TEST_F(GptTest, InitStatisticsAndDeterminism) {
  auto be = make_cpu_backend();
  const ModelConfig cfg{4, 4, 128, 64, 250};
  Gpt a(cfg, *be, 1), b(cfg, *be, 1), c(cfg, *be, 1);
  a.init(5);
  b.init(5);
  c.init(6);
  const auto pa = host_params(a), pb = host_params(b), pc = host_params(c);
  EXPECT_EQ(pa, pb);
  EXPECT_NE(pa, pc);
  const ParamLayout& L = a.layout();
  auto stats = [&](Param p, std::size_t count) {
    const TensorInfo& t = L[p];
    double s = 0, s2 = 0;
    for (std::size_t i = 0; i < count; ++i)
      s += pa[t.offset + i], s2 += pa[t.offset + i] * pa[t.offset + i];
    return std::pair{s / double(count), std::sqrt(s2 / double(count))};
  };
  // 50k+ samples: the standard deviation is estimated to ~0.5%, so 5% is a safe band.
  const auto [fc_mean, fc_std] = stats(Param::fcw, L[Param::fcw].numel);
  EXPECT_NEAR(fc_std, 0.02, 0.001);
  EXPECT_NEAR(fc_mean, 0.0, 0.001);
  const auto [proj_mean, proj_std] = stats(Param::fcprojw, L[Param::fcprojw].numel);
  EXPECT_NEAR(proj_std, 0.02 / std::sqrt(8.0), 0.0005);  // 1/sqrt(2 n_layer)
  EXPECT_EQ(stats(Param::qkvb, L[Param::qkvb].numel).second, 0.0);
  EXPECT_EQ(stats(Param::ln2w, L[Param::ln2w].numel).first, 1.0);
  EXPECT_EQ(stats(Param::lnfb, L[Param::lnfb].numel).second, 0.0);
  // Padded rows of wte (250..255) are zero; the last real row is not.
  const std::size_t C = 128, wte = L[Param::wte].offset;
  for (std::size_t i = 250 * C; i < 256 * C; ++i) ASSERT_EQ(pa[wte + i], 0.0f);
  EXPECT_NE(pa[wte + 249 * C], 0.0f);
}

TEST_F(GptTest, InitialLossIsLnVocab) {
  auto be = make_cpu_backend();
  const ModelConfig cfg{4, 4, 128, 64, 256};
  Gpt m(cfg, *be, 4);
  m.init(1);
  const Batch batch = random_batch(4, 64, 256, 2);
  const float loss = m.forward(batch.tokens.data(), batch.targets.data(), 4, 64);
  // Logits start at std ~0.02 * sqrt(C) ~ 0.23 (unit LayerNorm outputs times 0.02 weights), which
  // adds ~var/2 ~ 0.03 to ln(256) = 5.545; 0.15 allows for the sample of 256 targets.
  EXPECT_NEAR(loss, std::log(256.0), 0.15);
}

// The whole model's gradient against central differences of its loss, one random direction per
// parameter tensor: d/de L(p + e u) = g . u. The loss is computed in float, so the directional
// form is used: each direction u ~ N(0, a^2) is scaled so that g . u ~ 1 (a = 1 / |g_tensor|).
// With e = 1e-3 the float rounding of the loss (~2.6e-7 at ~4.3) adds ~1.3e-4 to the
// difference quotient and the truncation error (e^2 times third derivatives, larger along the
// long directions of tensors with small gradients) was measured below 6e-4; the tolerance
// 2e-3 + 0.5% of g . u passes a correct gradient, while a wrong or missing term of a tensor's
// gradient shifts g . u by O(0.1-1).
TEST_F(GptTest, GradientMatchesFiniteDifferencesPerTensor) {
  auto be = make_cpu_backend();
  const ModelConfig cfg = test_config();
  const int B = 2, T = 12;
  Gpt m(cfg, *be, B);
  m.init(3);
  // Larger-than-init weights, so that every path (attention, LayerNorm gains) carries gradient.
  std::vector<float> p = host_params(m);
  Rng noise(4);
  for (auto& x : p) x += float(0.1 * noise.normal());
  const ParamLayout& L = m.layout();
  std::fill(p.begin() + L[Param::wte].offset + 70 * 16, p.begin() + L[Param::wpe].offset, 0.0f);
  m.set_params(p);
  const Batch batch = random_batch(B, T, cfg.vocab_size, 5);
  m.zero_grad();
  m.forward(batch.tokens.data(), batch.targets.data(), B, T);
  m.backward();
  const std::vector<float> g = host_grads(m);
  auto loss_at = [&](const std::vector<float>& params) {
    m.set_params(params);
    return m.evaluate(batch.tokens.data(), batch.targets.data(), B, T).mean();
  };
  for (const TensorInfo& t : L.tensors()) {
    Rng dir(100 + t.offset);
    double norm2 = 0;
    for (std::size_t i = 0; i < t.numel; ++i) norm2 += double(g[t.offset + i]) * g[t.offset + i];
    ASSERT_GT(norm2, 0.0) << t.name << " gets no gradient";
    const double a = 1.0 / std::sqrt(norm2);
    std::vector<double> u(t.numel);
    double gu = 0;
    for (std::size_t i = 0; i < t.numel; ++i) {
      u[i] = a * dir.normal();
      gu += u[i] * g[t.offset + i];
    }
    const double e = 1e-3;
    std::vector<float> plus = p, minus = p;
    for (std::size_t i = 0; i < t.numel; ++i) {
      plus[t.offset + i] += float(e * u[i]);
      minus[t.offset + i] -= float(e * u[i]);
    }
    const double fd = (loss_at(plus) - loss_at(minus)) / (2 * e);
    EXPECT_NEAR(gu, fd, 2e-3 + 5e-3 * std::abs(gu)) << t.name;
  }
}

TEST_F(GptTest, PaddedVocabularyNeverMattersNorGetsGradient) {
  auto be = make_cpu_backend();
  const ModelConfig cfg = test_config();  // V = 70, Vp = 128
  Gpt m(cfg, *be, 2);
  m.init(7);
  const Batch batch = random_batch(2, 12, 70, 8);
  m.zero_grad();
  const float loss = m.forward(batch.tokens.data(), batch.targets.data(), 2, 12);
  m.backward();
  const ParamLayout& L = m.layout();
  const std::size_t pad_begin = L[Param::wte].offset + 70 * 16, pad_end = L[Param::wpe].offset;
  const std::vector<float> g = host_grads(m);
  for (std::size_t i = pad_begin; i < pad_end; ++i) ASSERT_EQ(g[i], 0.0f) << i;
  // Large values in the padded rows give large padded logits: the loss must not see them.
  std::vector<float> p = host_params(m);
  for (std::size_t i = pad_begin; i < pad_end; ++i) p[i] = 50.0f;
  m.set_params(p);
  EXPECT_EQ(m.forward(batch.tokens.data(), batch.targets.data(), 2, 12), loss);
  // Training keeps the padded rows at zero (no gradient, and decay of zero is zero).
  m.init(7);
  AdamW opt(L, *be);
  for (int s = 0; s < 3; ++s) {
    m.zero_grad();
    m.forward(batch.tokens.data(), batch.targets.data(), 2, 12);
    m.backward();
    opt.step(m.params(), m.grads(), 1e-2, OptimConfig{});
  }
  p = host_params(m);
  for (std::size_t i = pad_begin; i < pad_end; ++i) ASSERT_EQ(p[i], 0.0f) << i;
}

namespace {

std::vector<float> train(const ModelConfig& cfg, const Batch& batch, int B, int T, int steps,
                         std::vector<float>* losses = nullptr) {
  auto be = make_cpu_backend();
  Gpt m(cfg, *be, B);
  m.init(11);
  AdamW opt(m.layout(), *be);
  OptimConfig oc;
  oc.schedule = "constant";
  oc.weight_decay = 0.0;
  for (int s = 0; s < steps; ++s) {
    m.zero_grad();
    const float loss = m.forward(batch.tokens.data(), batch.targets.data(), B, T);
    m.backward();
    opt.step(m.params(), m.grads(), 3e-3, oc);
    if (losses) losses->push_back(loss);
  }
  return host_params(m);
}

}  // namespace

// Two threads, so that the parallel paths of every op run (with the rows of a product split
// between threads) whatever OMP_NUM_THREADS the test runs under.
TEST_F(GptTest, SameSeedSameDataBitIdenticalAfter20Steps) {
  const ModelConfig cfg{2, 2, 32, 16, 100};
  const Batch batch = random_batch(3, 16, 100, 12);
  std::vector<float> a, b;
  {
    const Threads two(2);
    a = train(cfg, batch, 3, 16, 20);
    b = train(cfg, batch, 3, 16, 20);
  }
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  EXPECT_NE(a, train(cfg, batch, 3, 16, 19));  // and 20 steps did move the parameters
}

TEST_F(GptTest, OverfitsOneBatch) {
  const ModelConfig cfg{2, 2, 64, 32, 64};
  const Batch batch = random_batch(2, 32, 64, 13);
  std::vector<float> losses;
  train(cfg, batch, 2, 32, 150, &losses);
  EXPECT_GT(losses.front(), 3.5);  // ln 64 = 4.16: the start knows nothing
  EXPECT_LT(losses.back(), 0.1);   // 64 random tokens memorised
}

TEST_F(GptTest, GradientAccumulationEqualsOneBigBatch) {
  auto be = make_cpu_backend();
  const ModelConfig cfg = test_config();
  const Batch big = random_batch(4, 12, 70, 14);
  Gpt m(cfg, *be, 4);
  m.init(15);
  m.zero_grad();
  m.forward(big.tokens.data(), big.targets.data(), 4, 12);
  m.backward();
  const std::vector<float> g_big = host_grads(m);
  m.zero_grad();
  for (int half = 0; half < 2; ++half) {
    const std::size_t off = std::size_t(half) * 2 * 12;
    m.forward(big.tokens.data() + off, big.targets.data() + off, 2, 12, 0.5f);
    m.backward();
  }
  const std::vector<float> g_acc = host_grads(m);
  double max_abs = 0;
  for (float x : g_big) max_abs = std::max(max_abs, double(std::abs(x)));
  // Same sums in another grouping: float rounding only, ~1e-6 of the largest gradient.
  for (std::size_t i = 0; i < g_big.size(); ++i)
    ASSERT_NEAR(g_acc[i], g_big[i], 1e-5 * max_abs) << i;
}

TEST_F(GptTest, EvaluateSumsMatchForwardAndSkipExactly) {
  auto be = make_cpu_backend();
  const ModelConfig cfg = test_config();
  Gpt m(cfg, *be, 3);
  m.init(16);
  const Batch batch = random_batch(3, 12, 70, 17);
  const float mean = m.forward(batch.tokens.data(), batch.targets.data(), 3, 12);
  const EvalSums sums = m.evaluate(batch.tokens.data(), batch.targets.data(), 3, 12);
  EXPECT_EQ(sums.tokens, 36u);
  // The same float ops in the same order per row: equal up to the float mean's rounding.
  EXPECT_NEAR(sums.loss_sum, double(mean) * 36, 1e-5 * sums.loss_sum);
  // Skipping the positions from 7 on scores exactly what a 7-token window scores (causality).
  std::vector<int> targets(batch.targets.begin(), batch.targets.begin() + 12);
  for (int t = 7; t < 12; ++t) targets[t] = -1;
  const EvalSums skipped = m.evaluate(batch.tokens.data(), targets.data(), 1, 12);
  const EvalSums short_window = m.evaluate(batch.tokens.data(), batch.targets.data(), 1, 7);
  EXPECT_EQ(skipped.tokens, 7u);
  EXPECT_EQ(short_window.tokens, 7u);
  EXPECT_NEAR(skipped.loss_sum, short_window.loss_sum, 1e-5 * short_window.loss_sum);
  // A larger evaluation batch than the training batch is fine (buffers grow).
  const Batch many = random_batch(9, 12, 70, 18);
  EXPECT_EQ(m.evaluate(many.tokens.data(), many.targets.data(), 9, 12).tokens, 108u);
}

TEST_F(GptTest, RejectsBadInput) {
  auto be = make_cpu_backend();
  Gpt m(test_config(), *be, 2);
  m.init(1);
  Batch batch = random_batch(2, 12, 70, 19);
  EXPECT_THROW(m.forward(batch.tokens.data(), batch.targets.data(), 3, 12), Error);  // B > max
  EXPECT_THROW(m.forward(batch.tokens.data(), batch.targets.data(), 1, 13), Error);  // T > ctx
  batch.tokens[5] = 70;  // outside the vocabulary
  EXPECT_THROW(m.forward(batch.tokens.data(), batch.targets.data(), 2, 12), Error);
  EXPECT_THROW(m.backward(), Error);  // no successful forward yet
}
