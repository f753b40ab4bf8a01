// Helpers shared by the tests: temporary directories, running the mixsim binary, file paths.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace mixsim::testing {

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;   // the process's exit status, or 128+signal when killed by a signal
  std::string out;      // stdout
  std::string err;      // stderr
};

// Runs `argv` (no shell) with extra environment entries, capturing stdout and stderr.
CommandResult run_command(const std::vector<std::string>& argv,
                          const std::vector<std::string>& env = {});

// The built mixsim binary and the source tree (set by ctest through the environment).
std::string mixsim_binary();
std::filesystem::path source_dir();
std::filesystem::path build_dir();

void write_file(const std::filesystem::path& path, const std::string& text);
std::string read_file(const std::filesystem::path& path);

}  // namespace mixsim::testing
