// Errors mixsim reports to its users. Every message says what went wrong, where (file, option,
// rank) and, where it can, what to do. main() turns them into one line and an exit code.
#pragma once

#include <fmt/format.h>

#include <string>
#include <utility>

#include "mixsim/core/error_types.hpp"

namespace mixsim {

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

template <class... Args>
[[noreturn]] void usage_fail(fmt::format_string<Args...> format, Args&&... args) {
  throw UsageError(fmt::format(format, std::forward<Args>(args)...));
}

[[noreturn]] void internal_error(const char* file, int line, const std::string& what);

}  // namespace mixsim

// An internal invariant (a bug in mixsim, not bad input): names the source line.
#define MIXSIM_CHECK(cond, ...)                                                                   \
  do {                                                                                           \
    if (!(cond)) ::mixsim::internal_error(__FILE__, __LINE__, fmt::format("" __VA_ARGS__));      \
  } while (0)
