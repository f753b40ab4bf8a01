// An environment variable set for a scope: the previous value (or its absence) comes back at the
// end, also when the scope is left by an exception. Header-only, so that every test binary (the
// GPU tests link nothing but the compute layers) can use it.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace mixsim::testing {

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_.c_str(), old_->c_str(), 1);
    else
      unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace mixsim::testing
