// AdamW against a step computed by hand, decay only where the layout says, clipping by the
// global norm, and the learning-rate schedules.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/error.hpp"
#include "mixsim/model/optimizer.hpp"

using namespace mixsim;

namespace {

// A model small enough to reason about element by element: C = 2, vocab 2 (Vp 64), 1 layer.
ModelConfig micro_config() {
  return {1, 1, 2, 2, 2};
}

// One AdamW step of one scalar, in double, from zero moments (step t = 1).
double adamw_by_hand(double p, double g, double lr, double wd, const OptimConfig& c) {
  const double m = (1 - c.beta1) * g, v = (1 - c.beta2) * g * g;
  const double mhat = m / (1 - c.beta1), vhat = v / (1 - c.beta2);
  return p - lr * (mhat / (std::sqrt(vhat) + c.eps) + wd * p);
}

}  // namespace

TEST(AdamW, FirstTwoStepsMatchHandComputation) {
  auto be = make_cpu_backend();
  ParamLayout layout(micro_config());
  AdamW opt(layout, *be);
  OptimConfig c;
  c.grad_clip = 0;  // no clipping here
  c.weight_decay = 0.1;
  std::vector<float> p(layout.total(), 0.5f), g(layout.total(), 0.0f);
  const std::size_t w = layout[Param::qkvw].offset, b = layout[Param::qkvb].offset;
  const std::size_t ln = layout[Param::ln1w].offset;
  g[w] = 0.3f;
  g[b] = -2.0f;
  g[ln] = 1e-3f;
  const double lr = 0.01;
  opt.step(p.data(), g.data(), lr, c);
  // fp32 arithmetic of a few operations on O(1) values: 1e-6 absolute.
  EXPECT_NEAR(p[w], adamw_by_hand(0.5, 0.3, lr, 0.1, c), 1e-6);    // matrix: decayed
  EXPECT_NEAR(p[b], adamw_by_hand(0.5, -2.0, lr, 0.0, c), 1e-6);   // bias: not decayed
  EXPECT_NEAR(p[ln], adamw_by_hand(0.5, 1e-3, lr, 0.0, c), 1e-6);  // LayerNorm: not decayed
  // An element with zero gradient: only the decay moves it (and only if it is decayed).
  EXPECT_NEAR(p[w + 1], 0.5 - lr * 0.1 * 0.5, 1e-7);
  EXPECT_EQ(p[b + 1], 0.5f);
  // Second step with the same gradient: moments m2 = b1 m1 + (1-b1) g, bias corrections at t=2.
  const double p1 = p[b];
  opt.step(p.data(), g.data(), lr, c);
  const double m1 = (1 - c.beta1) * -2.0, v1 = (1 - c.beta2) * 4.0;
  const double m2 = c.beta1 * m1 + (1 - c.beta1) * -2.0, v2 = c.beta2 * v1 + (1 - c.beta2) * 4.0;
  const double expect =
      p1 - lr * (m2 / (1 - c.beta1 * c.beta1)) / (std::sqrt(v2 / (1 - c.beta2 * c.beta2)) + c.eps);
  EXPECT_NEAR(p[b], expect, 1e-6);
  EXPECT_EQ(opt.steps_done(), 2);
}

TEST(AdamW, ClipsByGlobalNorm) {
  auto be = make_cpu_backend();
  ParamLayout layout(micro_config());
  AdamW opt(layout, *be);
  OptimConfig c;
  c.grad_clip = 1.0;
  std::vector<float> p(layout.total(), 0.0f), g(layout.total(), 0.0f);
  g[0] = 3.0f;
  g[layout.total() - 1] = 4.0f;  // norm 5
  const StepStats s = opt.step(p.data(), g.data(), 0.01, c);
  EXPECT_NEAR(s.grad_norm, 5.0, 1e-12);
  EXPECT_NEAR(s.clip_scale, 0.2, 1e-6);
  // Adam normalises the step size per element, so clipping shows only through eps: the moments
  // hold the clipped gradient. m = (1-b1) * 0.2 * 3 after one step.
  EXPECT_NEAR(opt.grad_norm(g.data()), 5.0, 1e-12);
  float m0 = 0;
  be->download(&m0, opt.m(), sizeof(float));
  EXPECT_NEAR(m0, (1 - c.beta1) * 0.6, 1e-7);
}

TEST(AdamW, DivergenceIsReported) {
  auto be = make_cpu_backend();
  ParamLayout layout(micro_config());
  AdamW opt(layout, *be);
  std::vector<float> p(layout.total(), 0.0f), g(layout.total(), 0.0f);
  g[3] = std::nanf("");
  EXPECT_THROW(opt.step(p.data(), g.data(), 0.01, OptimConfig{}), Error);
}

TEST(Schedule, CosineWarmupToFloor) {
  OptimConfig c;
  c.lr = 1.0;
  c.lr_min = 0.1;
  c.warmup_steps = 10;
  c.schedule = "cosine";
  EXPECT_DOUBLE_EQ(lr_at(0, 110, c), 0.1);     // (0+1)/10 of the peak
  EXPECT_DOUBLE_EQ(lr_at(9, 110, c), 1.0);     // warmup ends at the peak
  EXPECT_DOUBLE_EQ(lr_at(10, 110, c), 1.0);    // decay starts at the peak
  EXPECT_NEAR(lr_at(59, 110, c), 0.55, 1e-2);  // 49/99 of the way: about halfway down
  EXPECT_DOUBLE_EQ(lr_at(109, 110, c), 0.1);   // the last step is at the floor
  EXPECT_DOUBLE_EQ(lr_at(500, 110, c), 0.1);   // and stays there
  for (int s = 10; s < 109; ++s) EXPECT_GT(lr_at(s, 110, c), lr_at(s + 1, 110, c));
}

TEST(Schedule, LinearAndConstant) {
  OptimConfig c;
  c.lr = 2.0;
  c.lr_min = 0.0;
  c.warmup_steps = 0;
  c.schedule = "linear";
  EXPECT_DOUBLE_EQ(lr_at(0, 101, c), 2.0);
  EXPECT_DOUBLE_EQ(lr_at(50, 101, c), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(100, 101, c), 0.0);
  c.schedule = "constant";
  c.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(lr_at(1, 101, c), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(77, 101, c), 2.0);
  c.schedule = "bogus";
  EXPECT_THROW(lr_at(77, 101, c), UsageError);
}
