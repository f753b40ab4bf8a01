#include "mixsim/core/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <string_view>

#include "mixsim/core/log.hpp"

namespace mixsim {

namespace {

// Redraw in place only on a real terminal. Under mpirun a rank's stdout is a pseudo-terminal
// even when mpirun's own output goes to a file, so ranks of an MPI job print plain lines.
// MIXSIM_PROGRESS=plain|terminal overrides the guess.
bool stdout_is_terminal() {
  if (const char* mode = std::getenv("MIXSIM_PROGRESS")) return std::string_view(mode) == "terminal";
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("SLURM_JOB_ID"))
    return false;
  return isatty(STDOUT_FILENO) == 1;
}

}  // namespace

Progress::Progress(std::string label, std::uint64_t total, std::string unit)
    : Progress(std::move(label), total, std::move(unit), stdout, stdout_is_terminal(),
               stdout_is_terminal() ? 0.25 : 10.0) {}

Progress::Progress(std::string label, std::uint64_t total, std::string unit, std::FILE* out,
                   bool terminal, double interval_s)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      out_(out),
      terminal_(terminal),
      enabled_(log::settings().rank == 0),
      interval_s_(interval_s),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

Progress::~Progress() {
  // A progress line left open on a terminal would be overwritten by the next message.
  if (enabled_ && terminal_ && !finished_ && done_ > 0) std::fputc('\n', out_);
}

void Progress::update(std::uint64_t done, std::string_view extra) {
  done_ = done;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_print_).count() < interval_s_) return;
  last_print_ = now;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  print(format_line(label_, done, total_, unit_, elapsed, extra), false);
}

void Progress::finish(std::string_view extra) {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  print(format_line(label_, done_, total_, unit_, elapsed, extra), true);
}

void Progress::print(const std::string& line, bool final_line) {
  std::string text = fmt::format("[{:8.1f}s] {}", log::seconds_since_start(), line);
  if (terminal_) {
    std::fprintf(out_, "\r\033[K%s%s", text.c_str(), final_line ? "\n" : "");
  } else {
    std::fprintf(out_, "%s\n", text.c_str());
  }
  std::fflush(out_);
}

std::string Progress::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<long long>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string Progress::format_line(std::string_view label, std::uint64_t done, std::uint64_t total,
                                  std::string_view unit, double elapsed_s,
                                  std::string_view extra) {
  double rate = elapsed_s > 0 ? static_cast<double>(done) / elapsed_s : 0.0;
  std::string line;
  if (total > 0) {
    double pct = 100.0 * static_cast<double>(done) / static_cast<double>(total);
    line = fmt::format("{}: {}/{} {} ({:.1f}%)", label, done, total, unit, pct);
  } else {
    line = fmt::format("{}: {} {}", label, done, unit);
  }
  line += fmt::format(", {:.4g} {}/s", rate, unit);
  if (total > 0 && done < total) {
    double eta = rate > 0 ? static_cast<double>(total - done) / rate : -1.0;
    line += fmt::format(", ETA {}", format_duration(eta));
  } else {
    line += fmt::format(", took {}", format_duration(elapsed_s));
  }
  if (!extra.empty()) line += fmt::format(", {}", extra);
  return line;
}

}  // namespace mixsim
