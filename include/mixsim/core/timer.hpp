// Wall-clock timing: a stopwatch and a scope guard that adds its lifetime to an accumulator.
#pragma once

#include <chrono>

namespace mixsim {

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  void restart() { start_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  // Seconds since the start or the last lap, and restarts: consecutive phases of a loop.
  double lap() {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - start_).count();
    start_ = now;
    return s;
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

class ScopedTimer {
 public:
  explicit ScopedTimer(double& accumulator_s) : acc_(accumulator_s) {}
  ~ScopedTimer() { acc_ += watch_.seconds(); }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& acc_;
  Stopwatch watch_;
};

}  // namespace mixsim
