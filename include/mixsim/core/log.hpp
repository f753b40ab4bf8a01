// Logging for people: one line per event, on rank 0 unless asked otherwise, with the seconds
// since start. Debug lines appear only with --verbose. Warnings and errors go to stderr.
#pragma once

#include <fmt/format.h>

#include <string>
#include <utility>

namespace mixsim::log {

struct Settings {
  int rank = 0;
  int size = 1;
  bool verbose = false;   // print debug lines
  bool all_ranks = false; // print info/debug lines on every rank, prefixed with the rank
};

void init(const Settings& settings);
const Settings& settings();
double seconds_since_start();

void write_info(const std::string& line);
void write_debug(const std::string& line);
void write_warn(const std::string& line);
// An info line from whichever rank calls it (e.g. the leader of a training group), tagged with
// the rank when there are several.
void write_any_rank(const std::string& line);

template <class... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
  write_info(fmt::format(format, std::forward<Args>(args)...));
}
template <class... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) {
  if (settings().verbose) write_debug(fmt::format(format, std::forward<Args>(args)...));
}
template <class... Args>
void warn(fmt::format_string<Args...> format, Args&&... args) {
  write_warn(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace mixsim::log
