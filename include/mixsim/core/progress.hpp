// Progress of long work: done/total, rate and ETA. On a terminal one line is redrawn in place;
// otherwise (SLURM logs, pipes) plain lines are printed at an interval, never carriage returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace mixsim {

class Progress {
 public:
  // `unit` names what is counted ("tokens", "mixtures"). Prints only where log::info prints.
  Progress(std::string label, std::uint64_t total, std::string unit);
  // For tests and custom sinks: explicit stream, terminal mode and interval between lines.
  Progress(std::string label, std::uint64_t total, std::string unit, std::FILE* out,
           bool terminal, double interval_s);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Report `done` units finished; `extra` is appended (e.g. "loss 3.21").
  void update(std::uint64_t done, std::string_view extra = {});
  // Print the final line (always), with total time and mean rate.
  void finish(std::string_view extra = {});

  // The text of one progress line; pure, for tests.
  static std::string format_line(std::string_view label, std::uint64_t done, std::uint64_t total,
                                 std::string_view unit, double elapsed_s, std::string_view extra);
  static std::string format_duration(double seconds);

 private:
  void print(const std::string& line, bool final_line);

  std::string label_;
  std::uint64_t total_;
  std::string unit_;
  std::FILE* out_;
  bool terminal_;
  bool enabled_;
  bool finished_ = false;
  double interval_s_;
  std::uint64_t done_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
};

}  // namespace mixsim
