// Private helpers of the CPU kernels: static partitions of index ranges, so that which thread
// computes what (and so every summation order) is fixed by the sizes and the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>

namespace mixsim::cpu {

struct Range {
  std::size_t begin;
  std::size_t end;
};

// Part `i` of `parts` contiguous, nearly equal parts of [0, n).
inline Range split_range(std::size_t n, std::size_t parts, std::size_t i) {
  const std::size_t base = n / parts, extra = n % parts;
  const std::size_t begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

// Work below this many elements runs on one thread: an OpenMP fork costs ~1-2 us.
inline constexpr std::size_t kParallelMin = 16384;

}  // namespace mixsim::cpu
