// The exception types of mixsim, without formatting helpers, so that CUDA sources (compiled by
// nvcc, which cannot parse fmt's compile-time format checks) can throw them too.
#pragma once

#include <stdexcept>

namespace mixsim {

// A run that cannot complete (bad file, failed I/O, diverged training): exit code 1.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The user asked for something invalid (unknown option, bad value, missing key): exit code 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace mixsim
