// The switches read from the environment when a backend is made: MIXSIM_TC_ATTENTION,
// MIXSIM_CUBLASLT, MIXSIM_BF16_ACTIVATIONS, MIXSIM_BF16_WEIGHTS and MIXSIM_BF16_OUTPUTS (on for
// the bf16 backends, off for cpu and cuda), MIXSIM_CLASSIFIER_EXP2 (both CUDA backends, on),
// MIXSIM_GELU_EXP2 (cuda-bf16, on; cuda, off) and the opt-ins MIXSIM_TC_WIDE_FORWARD (cuda-bf16,
// off), MIXSIM_BF16_ATTENTION_OUT and MIXSIM_BF16_BRANCH_OUTPUTS (cpu-bf16 and cuda-bf16, off),
// MIXSIM_LAYERNORM_VEC4 (both
// CUDA backends, off), MIXSIM_ATTENTION_HEAVY_FIRST and MIXSIM_ATTENTION_FUSED_DQ (cuda-bf16,
// off), MIXSIM_BF16_GELU_EPILOGUE (cuda-bf16, off), MIXSIM_LAYERNORM_FEEDS_PRODUCT (all four
// backends, off), MIXSIM_ATTENTION_WGMMA and MIXSIM_ATTENTION_WGMMA_BACKWARD (cuda-bf16 on an
// sm_90a GPU, off), MIXSIM_CUBLASLT_TUNE (where cuBLASLt is on,
// off) and MIXSIM_CUBLASLT_CHOICES (where cuBLASLt is on, on: kernels/cuda_backend.cu's
// lt_options also reads the file paths MIXSIM_CUBLASLT_TUNE_OUT and
// MIXSIM_CUBLASLT_CHOICES_FILE). Each is "1" (on) or "0" (off);
// unset, the backend takes its default (docs/architecture.md). Header-only, so that the CUDA
// library, which links none of mixsim's host libraries, reads them the same way.
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>

#include "mixsim/core/error_types.hpp"

namespace mixsim {

// The setting of the switch `name`: `fallback` when the environment does not set it (or sets it
// to the empty string), true for "1", false for "0". Any other value is a UsageError that names
// the variable and the value: a typo ("ture", "off") must not quietly pick a path.
inline bool env_switch(const char* name, bool fallback) {
  const char* setting = std::getenv(name);
  if (!setting || !*setting) return fallback;
  const std::string_view value(setting);
  if (value == "1") return true;
  if (value == "0") return false;
  throw UsageError("environment variable " + std::string(name) + "=" + std::string(value) +
                   ": expected 1 (on) or 0 (off), or unset for the default (" +
                   (fallback ? "on" : "off") + " here)");
}

}  // namespace mixsim
