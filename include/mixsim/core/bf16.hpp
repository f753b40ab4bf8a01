// bf16 on the host: a float rounded to bf16's 8 significant bits (to nearest, ties to even, as
// __float2bfloat16_rn on the GPU), its 16 bits, and back. Used by cpu-bf16 (the rounded operands
// of its products) and by the bf16 gradient sums over MPI (the bits on the wire).
#pragma once

#include <bit>
#include <cstdint>

namespace mixsim {

// The bf16 bits of x; a NaN stays a (quiet) NaN.
inline std::uint16_t bf16_bits(float x) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

// The float of bf16 bits (exact).
inline float bf16_value(std::uint16_t bits) {
  return std::bit_cast<float>(std::uint32_t{bits} << 16);
}

// x rounded to bf16 and widened back.
inline float round_to_bf16(float x) {
  return bf16_value(bf16_bits(x));
}

}  // namespace mixsim
