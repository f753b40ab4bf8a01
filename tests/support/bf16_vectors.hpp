// Whole vectors to bf16 bits and back, for the tests that compare bf16 tensors (cpu-bf16's and
// the GPU's). Header-only, as scoped_env.hpp, so that every test binary can use it.
#pragma once

#include <cstdint>
#include <vector>

#include "mixsim/core/bf16.hpp"

namespace mixsim::testing {

// Each value rounded to bf16 (nearest even), as its 16 bits.
inline std::vector<std::uint16_t> bits_of(const std::vector<float>& x) {
  std::vector<std::uint16_t> b(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) b[i] = bf16_bits(x[i]);
  return b;
}

// bf16 bits as the values they hold (exact).
inline std::vector<float> widened(const std::vector<std::uint16_t>& bits) {
  std::vector<float> v(bits.size());
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = bf16_value(bits[i]);
  return v;
}

}  // namespace mixsim::testing
