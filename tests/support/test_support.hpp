// Helpers shared by the tests: temporary directories, running the mixsim binary, file paths.
#pragma once

#include <filesystem>
#include <functional>
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

// A command running in the background (stdout/stderr to files), for tests that signal it.
class BackgroundCommand {
 public:
  BackgroundCommand(const std::vector<std::string>& argv, const std::filesystem::path& log_dir);
  ~BackgroundCommand();  // kills (SIGKILL) and reaps the process if it is still running
  BackgroundCommand(const BackgroundCommand&) = delete;
  BackgroundCommand& operator=(const BackgroundCommand&) = delete;
  int pid() const { return pid_; }
  void signal(int sig) const;
  // Signals the direct children (e.g. the ranks mpirun started), as SLURM's --signal does to the
  // tasks of a step; returns how many were signalled.
  int signal_children(int sig) const;
  bool running();             // false once it has exited (and then it is reaped)
  CommandResult wait();       // blocks until it exits

 private:
  int pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::filesystem::path out_, err_;
};

// Polls `ready` every 2 ms: true once it holds, false when the command has ended first or
// `timeout_s` has passed.
bool wait_until(BackgroundCommand& command, const std::function<bool()>& ready,
                double timeout_s = 60);

// `command` under `mpirun -np NP --oversubscribe`, one OpenMP thread a rank.
std::vector<std::string> under_mpirun(int np, std::vector<std::string> command);

// The built mixsim binary and the source tree (set by ctest through the environment).
std::string mixsim_binary();
std::filesystem::path source_dir();
std::filesystem::path build_dir();

void write_file(const std::filesystem::path& path, const std::string& text);

// A small synthetic corpus for pipeline tests, under `root`:
//   root/partitions/<name>/doc<i>.txt   for each partition (documents of word salad drawn from
//                                       a vocabulary that differs per partition, so that models
//                                       trained on different partitions differ)
//   root/seed/doc<i>.txt                the seed corpus
//   root/ood/doc<i>.txt                 an out-of-domain eval set
// and root/job.ini, a job file for a tiny model over it (run.out_dir = root/run).
struct CorpusSpec {
  std::vector<std::pair<std::string, int>> partitions{{"alpha", 40}, {"beta", 40}, {"gamma", 20}};
  int seed_documents = 60;
  int words_per_document = 60;
  std::uint64_t unit_tokens = 6000;
};
std::filesystem::path write_test_corpus(const std::filesystem::path& root,
                                        const CorpusSpec& spec = {});
std::string read_file(const std::filesystem::path& path);

}  // namespace mixsim::testing
