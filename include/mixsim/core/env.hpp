// The opt-in switches read from the environment (MIXSIM_TC_ATTENTION, MIXSIM_CUBLASLT,
// MIXSIM_BF16_ACTIVATIONS: the backends read them when they are made). Header-only, so that the
// CUDA library, which links none of mixsim's host libraries, reads them the same way.
#pragma once

#include <cstdlib>
#include <string_view>

namespace mixsim {

// Whether the environment sets `name` to exactly "1".
inline bool env_switch_on(const char* name) {
  const char* setting = std::getenv(name);
  return setting && std::string_view(setting) == "1";
}

}  // namespace mixsim
