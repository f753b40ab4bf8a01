#include "test_support.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace mixsim::testing {
namespace fs = std::filesystem;

TempDir::TempDir() {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto candidate = fs::temp_directory_path() /
                     ("mixsim-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
    if (fs::create_directory(candidate)) {
      path_ = candidate;
      return;
    }
  }
  throw std::runtime_error("cannot create a temporary directory");
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

namespace {

pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
            const fs::path& out_path, const fs::path& err_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  // mpirun as root, oversubscribed on a 2-core machine (see platform-notes.md).
  for (const char* e : {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                        "OMPI_MCA_rmaps_base_oversubscribe=1"})
    env_strings.emplace_back(e);
  for (const auto& e : env) env_strings.push_back(e);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + argv[0]);
  return pid;
}

int exit_code_of(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

CommandResult run_command(const std::vector<std::string>& argv,
                          const std::vector<std::string>& env) {
  TempDir tmp;
  const auto out_path = tmp / "stdout";
  const auto err_path = tmp / "stderr";
  const pid_t pid = spawn(argv, env, out_path, err_path);
  int status = 0;
  waitpid(pid, &status, 0);
  CommandResult result;
  result.exit_code = exit_code_of(status);
  result.out = read_file(out_path);
  result.err = read_file(err_path);
  return result;
}

BackgroundCommand::BackgroundCommand(const std::vector<std::string>& argv,
                                     const fs::path& log_dir)
    : out_(log_dir / "stdout"), err_(log_dir / "stderr") {
  pid_ = spawn(argv, {}, out_, err_);
}

BackgroundCommand::~BackgroundCommand() {
  if (!reaped_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
  }
}

void BackgroundCommand::signal(int sig) const { ::kill(pid_, sig); }

int BackgroundCommand::signal_children(int sig) const {
  int count = 0;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // Fields after the ")" that closes the command name: state, ppid, ...
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    int ppid = 0;
    rest >> state >> ppid;
    if (ppid == pid_ && ::kill(std::stoi(name), sig) == 0) ++count;
  }
  return count;
}

bool BackgroundCommand::running() {
  if (reaped_) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
  return !reaped_;
}

CommandResult BackgroundCommand::wait() {
  if (!reaped_) {
    waitpid(pid_, &status_, 0);
    reaped_ = true;
  }
  return {exit_code_of(status_), read_file(out_), read_file(err_)};
}

bool wait_until(BackgroundCommand& command, const std::function<bool()>& ready, double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  while (!ready()) {
    if (!command.running()) return false;
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

std::vector<std::string> under_mpirun(int np, std::vector<std::string> command) {
  command.insert(command.begin(), {"mpirun", "-np", std::to_string(np), "--oversubscribe", "-x",
                                   "OMP_NUM_THREADS=1"});
  return command;
}

std::string mixsim_binary() {
  const char* p = std::getenv("MIXSIM_BINARY");
  return p ? p : MIXSIM_TEST_BINARY;
}

fs::path source_dir() {
  const char* p = std::getenv("MIXSIM_SOURCE_DIR");
  return p ? p : MIXSIM_TEST_SOURCE_DIR;
}

fs::path build_dir() {
  const char* p = std::getenv("MIXSIM_BUILD_DIR");
  return p ? p : MIXSIM_TEST_BUILD_DIR;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

namespace {

std::string salad(std::uint64_t& state, const std::vector<std::string>& words, int n) {
  std::string text;
  for (int i = 0; i < n; ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    text += words[(state >> 33) % words.size()];
    text += (i % 12 == 11) ? ".\n" : " ";
  }
  return text;
}

void write_documents(const fs::path& dir, int count, const std::vector<std::string>& words,
                     int length, std::uint64_t seed) {
  fs::create_directories(dir);
  std::uint64_t state = seed;
  for (int d = 0; d < count; ++d)
    write_file(dir / ("doc" + std::to_string(d) + ".txt"), salad(state, words, length));
}

}  // namespace

fs::path write_test_corpus(const fs::path& root, const CorpusSpec& spec) {
  const std::vector<std::vector<std::string>> vocabularies = {
      {"the", "market", "rose", "shares", "bank", "price", "trade", "fell", "index", "bond"},
      {"a", "ship", "sailed", "north", "storm", "crew", "wave", "island", "captain", "wind"},
      {"our", "garden", "seeds", "grow", "soil", "water", "bloom", "leaf", "root", "sun"},
      {"in", "court", "judge", "law", "trial", "verdict", "jury", "case", "appeal", "rule"},
  };
  std::uint64_t seed = 1;
  for (std::size_t p = 0; p < spec.partitions.size(); ++p) {
    const auto& [name, docs] = spec.partitions[p];
    write_documents(root / "partitions" / name, docs, vocabularies[p % vocabularies.size()],
                    spec.words_per_document, seed++);
  }
  std::vector<std::string> all;
  for (const auto& v : vocabularies) all.insert(all.end(), v.begin(), v.end());
  write_documents(root / "seed", spec.seed_documents, all, spec.words_per_document, 99);
  write_documents(root / "ood", 10, {"lorem", "ipsum", "dolor", "sit", "amet"}, 40, 7);
  const auto job = root / "job.ini";
  write_file(job, "[run]\nname = test\nout_dir = " + (root / "run").string() +
                      "\nseed = 42\nthreads = 1\n"
                      "[model]\nn_layer = 2\nn_head = 2\nn_embd = 32\ncontext = 32\n"
                      "[data]\nroot = " + (root / "partitions").string() +
                      "\nseed_corpus = " + (root / "seed").string() +
                      "\neval_dirs = " + (root / "ood").string() +
                      "\nunit_tokens = " + std::to_string(spec.unit_tokens) +
                      "\nvalid_fraction = 0.1\ntest_fraction = 0.05\n"
                      "[train]\nglobal_batch = 4\nval_tokens = 512\nlog_every = 5\n"
                      "checkpoint_every = 5\n"
                      "[seed]\nsteps = 20\nlr = 0.003\nwarmup_steps = 2\n"
                      "[cpt]\nsteps_per_unit = 6\nlr = 0.001\n");
  return job;
}

}  // namespace mixsim::testing
