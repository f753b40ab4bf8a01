// Numbers on the benchmarks' command lines: the whole argument must be a number in range, else
// the program says which option and value it refuses and exits with status 2 (std::atoi read
// "8x" as 8 and "x" as 0 and went on). Header-only: the GPU benchmarks link no bench library.
#pragma once

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <system_error>

namespace mixsim::bench {

// The integer `text` given to `option` of `program`, from lo to hi.
inline long long int_arg(const char* program, const char* option, const char* text, long long lo,
                         long long hi) {
  long long v = 0;
  const char* end = text + std::strlen(text);
  const auto [ptr, ec] = std::from_chars(text, end, v);
  if (ec != std::errc() || ptr != end || *text == '\0' || v < lo || v > hi) {
    std::fprintf(stderr, "%s: %s '%s': give a whole number from %lld to %lld\n", program, option,
                 text, lo, hi);
    std::exit(2);
  }
  return v;
}

// The number `text` given to `option` of `program`, above 0.
inline double positive_arg(const char* program, const char* option, const char* text) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(v > 0) || v > 1e300) {
    std::fprintf(stderr, "%s: %s '%s': give a number above 0\n", program, option, text);
    std::exit(2);
  }
  return v;
}

}  // namespace mixsim::bench
