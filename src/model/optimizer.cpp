#include "mixsim/model/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "mixsim/core/error.hpp"

namespace mixsim {

double lr_at(std::int64_t step, std::int64_t total_steps, const OptimConfig& c) {
  if (step < c.warmup_steps) return c.lr * double(step + 1) / double(c.warmup_steps);
  if (c.schedule == "constant") return c.lr;
  // Progress through the decay phase: 0 at the first step after warmup, 1 at the last step.
  const double span = double(std::max<std::int64_t>(1, total_steps - 1 - c.warmup_steps));
  const double progress = std::clamp(double(step - c.warmup_steps) / span, 0.0, 1.0);
  if (c.schedule == "linear") return c.lr + (c.lr_min - c.lr) * progress;
  if (c.schedule == "cosine")
    return c.lr_min + 0.5 * (c.lr - c.lr_min) * (1.0 + std::cos(std::numbers::pi * progress));
  usage_fail(
      "unknown learning-rate schedule '{}' (optim.schedule): use cosine, constant or "
      "linear",
      c.schedule);
}

AdamW::AdamW(const ParamLayout& layout, Backend& backend)
    : layout_(layout), backend_(backend), m_(backend, layout.total()), v_(backend, layout.total()) {
  backend_.zero(m_.get(), m_.bytes());
  backend_.zero(v_.get(), v_.bytes());
}

double AdamW::grad_norm(const float* grads) const {
  return std::sqrt(backend_.sum_squares(grads, layout_.total()));
}

StepStats AdamW::step(float* params, const float* grads, double lr, const OptimConfig& c,
                      std::uint16_t* params16) {
  StepStats stats;
  stats.grad_norm = grad_norm(grads);
  if (!std::isfinite(stats.grad_norm))
    fail(
        "training diverged: the gradient norm is {} at step {}; lower optim.lr, or set "
        "optim.grad_clip (now {})",
        stats.grad_norm, steps_ + 1, c.grad_clip);
  if (c.grad_clip > 0 && stats.grad_norm > c.grad_clip)
    stats.clip_scale = c.grad_clip / (stats.grad_norm + 1e-6);
  ++steps_;
  AdamWArgs args;
  args.lr = float(lr);
  args.beta1 = float(c.beta1);
  args.beta2 = float(c.beta2);
  args.eps = float(c.eps);
  args.bias_correction1 = float(1.0 - std::pow(c.beta1, double(steps_)));
  args.bias_correction2 = float(1.0 - std::pow(c.beta2, double(steps_)));
  args.grad_scale = float(stats.clip_scale);
  for (const TensorInfo& t : layout_.tensors()) {
    args.weight_decay = t.decay ? float(c.weight_decay) : 0.0f;
    backend_.adamw(params + t.offset, m_.get() + t.offset, v_.get() + t.offset, grads + t.offset,
                   t.numel, args, params16 ? params16 + t.offset : nullptr);
  }
  return stats;
}

}  // namespace mixsim
