#include "mixsim/core/log.hpp"

#include <chrono>
#include <cstdio>

namespace mixsim::log {
namespace {

Settings g_settings;
const auto g_start = std::chrono::steady_clock::now();

void emit(std::FILE* out, const char* tag, const std::string& line) {
  std::string prefix = fmt::format("[{:8.1f}s] ", seconds_since_start());
  if (g_settings.size > 1 && (g_settings.all_ranks || out == stderr))
    prefix += fmt::format("rank {}: ", g_settings.rank);
  // One fwrite per line keeps lines from different ranks whole in a shared log.
  std::string text = prefix + tag + line + "\n";
  std::fwrite(text.data(), 1, text.size(), out);
  std::fflush(out);
}

}  // namespace

void init(const Settings& settings) { g_settings = settings; }
const Settings& settings() { return g_settings; }

double seconds_since_start() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
}

void write_info(const std::string& line) {
  if (g_settings.rank == 0 || g_settings.all_ranks) emit(stdout, "", line);
}
void write_debug(const std::string& line) {
  if (g_settings.rank == 0 || g_settings.all_ranks) emit(stdout, "debug: ", line);
}
void write_warn(const std::string& line) { emit(stderr, "warning: ", line); }

void write_any_rank(const std::string& line) {
  std::string prefix = fmt::format("[{:8.1f}s] ", seconds_since_start());
  if (g_settings.size > 1) prefix += fmt::format("rank {}: ", g_settings.rank);
  std::string text = prefix + line + "\n";
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace mixsim::log
