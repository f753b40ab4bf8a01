// The switches read from the environment when a backend is made: MIXSIM_TC_ATTENTION,
// MIXSIM_CUBLASLT, MIXSIM_BF16_ACTIVATIONS, MIXSIM_BF16_WEIGHTS and MIXSIM_BF16_OUTPUTS, and
// the CUDA backends' opt-ins MIXSIM_TC_WIDE_FORWARD and MIXSIM_CLASSIFIER_EXP2. Each is "1" (on)
// or "0" (off); unset, the backend takes its default (on for the bf16 backends, off for cpu and
// cuda, the opt-ins off;
// docs/architecture.md). Header-only, so that the
// CUDA library, which links none of mixsim's host libraries, reads them the same way.
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
