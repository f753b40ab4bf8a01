// AdamW over the parameter layout: decoupled weight decay on the tensors the layout marks,
// clipping by the global gradient norm, and the learning-rate schedules.
#pragma once

#include <cstdint>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/config.hpp"
#include "mixsim/model/layout.hpp"

namespace mixsim {

// The learning rate of step `step` (0-based) of a run of `total_steps`: a linear warmup over
// warmup_steps to lr, then constant | linear to lr_min at the last step | cosine to lr_min.
double lr_at(std::int64_t step, std::int64_t total_steps, const OptimConfig& config);

struct StepStats {
  double grad_norm = 0.0;   // global L2 norm of the gradient, before clipping
  double clip_scale = 1.0;  // the factor the gradient was multiplied by (1: not clipped)
};

class AdamW {
 public:
  // Moments m and v (zero) in backend memory, in the layout of the parameters.
  AdamW(const ParamLayout& layout, Backend& backend);

  // One update of params (in place) from grads, at learning rate lr; unless params16 is null, it
  // also receives the updated params rounded to bf16 (Backend::adamw; Gpt::update hands it the
  // model's bf16 weight copy). Throws Error when the gradient norm is not finite (training
  // diverged), before anything is written.
  StepStats step(float* params, const float* grads, double lr, const OptimConfig& config,
                 std::uint16_t* params16 = nullptr);
  double grad_norm(const float* grads) const;

  std::int64_t steps_done() const { return steps_; }
  void set_steps_done(std::int64_t steps) { steps_ = steps; }  // when resuming from a checkpoint
  float* m() const { return m_.get(); }                        // (layout.total()) first moment
  float* v() const { return v_.get(); }                        // (layout.total()) second moment

 private:
  const ParamLayout& layout_;
  Backend& backend_;
  DeviceBuffer<float> m_;
  DeviceBuffer<float> v_;
  std::int64_t steps_ = 0;
};

}  // namespace mixsim
