// The training stages through the binary: seed, resume after SIGKILL, SIGTERM checkpoints,
// pool over groups of ranks with restart, truth mixtures. On a tiny synthetic corpus.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <regex>
#include <thread>

#include "mixsim/io/checkpoint.hpp"
#include "test_support.hpp"

using namespace mixsim;
using namespace mixsim::testing;
namespace fs = std::filesystem;

namespace {

class Training : public ::testing::Test {
 protected:
  void SetUp() override {
    job_ = write_test_corpus(dir_.path());
    auto r = run_command({mixsim_binary(), "prepare", "--config", job_.string()});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  }
  std::vector<std::string> cmd(std::vector<std::string> args) const {
    args.insert(args.begin(), {mixsim_binary()});
    args.insert(args.begin() + 2, {"--config", job_.string()});
    return args;
  }
  std::vector<std::string> mpi(int np, std::vector<std::string> args) const {
    return under_mpirun(np, cmd(std::move(args)));
  }
  fs::path run() const { return dir_ / "run"; }
  TempDir dir_;
  fs::path job_;
};

// Waits until `path` exists (a checkpoint was written) or the command ended.
bool wait_for_file(BackgroundCommand& c, const fs::path& path) {
  return wait_until(c, [&] { return fs::exists(path); });
}

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_F(Training, SeedTrainsAndLossFalls) {
  auto r = run_command(cmd({"train"}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto ck = read_checkpoint(run() / "seed.h5");
  EXPECT_TRUE(ck.provenance.complete);
  EXPECT_EQ(ck.provenance.kind, "seed");
  EXPECT_EQ(ck.provenance.steps_done, 20);
  EXPECT_EQ(ck.provenance.tokens_seen, 20u * 4 * 32);
  ASSERT_EQ(ck.curve.train_loss.size(), 20u);
  // From ~ln(257) = 5.55 at init, 20 steps on a 40-word vocabulary must make real progress.
  EXPECT_LT(ck.curve.train_loss.back(), ck.curve.train_loss.front() - 1.0);
  EXPECT_FALSE(ck.curve.valid_loss.empty());
  EXPECT_FALSE(fs::exists(run() / "seed.partial.h5"));
  // A second run finds it complete and does nothing.
  auto again = run_command(cmd({"train"}));
  EXPECT_EQ(again.exit_code, 0);
  EXPECT_NE(again.out.find("already complete"), std::string::npos) << again.out;
}

TEST_F(Training, SigkillAfterCheckpointThenRerunGivesTheUninterruptedWeights) {
  const std::vector<std::string> longer = {"--seed.steps", "300", "--train.checkpoint_every", "25"};
  auto args = cmd({"train"});
  args.insert(args.end(), longer.begin(), longer.end());
  auto ref = args;
  ref.insert(ref.end(), {"--seed.output", (run() / "reference.h5").string()});
  ASSERT_EQ(run_command(ref).exit_code, 0);

  {
    TempDir logs;
    BackgroundCommand job(args, logs.path());
    ASSERT_TRUE(wait_for_file(job, run() / "seed.partial.h5")) << job.wait().err;
    job.signal(SIGKILL);
    EXPECT_EQ(job.wait().exit_code, 128 + SIGKILL);
  }
  const auto partial = read_checkpoint_info(run() / "seed.partial.h5").provenance;
  ASSERT_LT(partial.steps_done, 300) << "the run ended before it could be killed";
  auto rerun = run_command(args);
  ASSERT_EQ(rerun.exit_code, 0) << rerun.err;
  EXPECT_NE(rerun.out.find("resuming from"), std::string::npos);
  const auto a = read_checkpoint(run() / "reference.h5");
  const auto b = read_checkpoint(run() / "seed.h5");
  EXPECT_TRUE(a.params == b.params) << "resumed weights differ from the uninterrupted run";
  EXPECT_EQ(a.curve.train_loss, b.curve.train_loss);
}

class StopSignal : public Training, public ::testing::WithParamInterface<int> {};

TEST_P(StopSignal, WritesACheckpointAndExitsWithCode3ThenResumes) {
  auto args = cmd({"train", "--seed.steps", "400", "--train.checkpoint_every", "0"});
  TempDir logs;
  BackgroundCommand job(args, logs.path());
  // Wait for the first progress line, so the signal handlers are installed.
  for (int i = 0; i < 2000 && read_file(logs / "stdout").find("step ") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  job.signal(GetParam());
  auto r = job.wait();
  ASSERT_EQ(r.exit_code, 3) << r.out << r.err;
  EXPECT_NE(r.out.find("stop signal received"), std::string::npos) << r.out;
  const auto p = read_checkpoint(run() / "seed.partial.h5", true);
  EXPECT_GT(p.provenance.steps_done, 0);
  EXPECT_LT(p.provenance.steps_done, 400);
  auto rerun = run_command(args);
  ASSERT_EQ(rerun.exit_code, 0) << rerun.err;
  EXPECT_TRUE(read_checkpoint_info(run() / "seed.h5").provenance.complete);
}

// SIGTERM: preemption and scancel; SIGUSR1: what `sbatch --signal=USR1@T` sends before the limit.
INSTANTIATE_TEST_SUITE_P(Signals, StopSignal, ::testing::Values(SIGTERM, SIGUSR1),
                         [](const auto& p) { return p.param == SIGTERM ? "SIGTERM" : "SIGUSR1"; });

TEST_F(Training, PoolWithFourRanksInGroupsOfTwoTrainsEachUnitOnceAndResumes) {
  ASSERT_EQ(run_command(cmd({"train"})).exit_code, 0);
  // Stop the pool once the first unit model is complete: SIGTERM to every rank, as SLURM's
  // --signal delivers it (mpirun would forward it too, but only after a delay of about 1 s).
  std::string interrupted_log;
  {
    TempDir logs;
    BackgroundCommand job(mpi(4, {"pool", "--pool.group_size", "2", "--cpt.steps_per_unit", "150"}),
                          logs.path());
    bool one_done = false;
    for (int i = 0; i < 12000 && !one_done && job.running(); ++i) {
      std::error_code ec;  // the directory appears with the first checkpoint
      for (fs::directory_iterator it(run() / "pool", ec), end; !ec && it != end; it.increment(ec))
        if (it->path().extension() == ".h5" &&
            it->path().string().find(".partial.") == std::string::npos)
          one_done = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_TRUE(one_done);
    ASSERT_EQ(job.signal_children(SIGTERM), 4);
    interrupted_log = job.wait().out;
  }
  std::vector<std::string> complete;
  for (const auto& e : fs::directory_iterator(run() / "pool"))
    if (e.path().string().find(".partial.") == std::string::npos) complete.push_back(e.path().string());
  auto r = run_command(mpi(4, {"pool", "--pool.group_size", "2", "--cpt.steps_per_unit", "150"}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::regex plan(R"(pool: (\d+) of (\d+) models to train \((\d+) complete\))");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, plan)) << r.out;
  const int total = std::stoi(m[2]);
  ASSERT_LT(static_cast<int>(complete.size()), total) << "the pool finished before the signal:\n" << interrupted_log;
  EXPECT_EQ(std::stoi(m[3]), static_cast<int>(complete.size()));
  EXPECT_EQ(std::stoi(m[1]), total - static_cast<int>(complete.size()));
  EXPECT_EQ(count(r.out, "trains '"), total - static_cast<int>(complete.size())) << r.out;
  // Every unit now has exactly one complete model, trained from the seed.
  int models = 0;
  const auto seed_crc = read_checkpoint_info(run() / "seed.h5").params_checksum;
  for (const auto& e : fs::directory_iterator(run() / "pool")) {
    ASSERT_EQ(e.path().string().find(".partial."), std::string::npos) << e.path();
    const auto info = read_checkpoint_info(e.path());
    EXPECT_TRUE(info.provenance.complete);
    EXPECT_EQ(info.provenance.kind, "pool");
    EXPECT_EQ(info.provenance.parent_checksum, seed_crc);
    EXPECT_EQ(info.provenance.units.size(), 1u);
    ++models;
  }
  EXPECT_EQ(models, total);
  // A third run has nothing to do.
  auto again = run_command(mpi(4, {"pool", "--pool.group_size", "2", "--cpt.steps_per_unit", "150"}));
  EXPECT_NE(again.out.find("pool: 0 of"), std::string::npos) << again.out;
}

TEST_F(Training, TruthMixturesGetKTimesTheUnitBudget) {
  ASSERT_EQ(run_command(cmd({"train"})).exit_code, 0);
  // --pending (slurm/submit.sh --skip-existing) prints the count of incomplete models last.
  auto pending = [&] {
    auto p = run_command(cmd({"truth", "--truth.mixtures", "alpha/0+beta/0", "--truth.all_units",
                              "true", "--pending"}));
    EXPECT_EQ(p.exit_code, 0) << p.out << p.err;
    const auto end = p.out.find_last_not_of('\n');
    return p.out.substr(p.out.rfind('\n', end) + 1, end - p.out.rfind('\n', end));
  };
  EXPECT_EQ(pending(), "2");
  auto r = run_command(mpi(2, {"truth", "--truth.mixtures", "alpha/0+beta/0", "--truth.all_units",
                               "true", "--truth.group_size", "1"}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const auto pair = read_checkpoint_info(run() / "truth" / "alpha_0+beta_0.h5").provenance;
  EXPECT_EQ(pair.kind, "truth");
  EXPECT_EQ(pair.total_steps, 2 * 6);  // k = 2 units x cpt.steps_per_unit
  EXPECT_EQ(pair.units, (std::vector<std::string>{"alpha/0", "beta/0"}));
  int all_units = 0;
  for (const auto& e : fs::directory_iterator(run() / "truth"))
    if (read_checkpoint_info(e.path()).provenance.units.size() > 2) {
      ++all_units;
      EXPECT_EQ(read_checkpoint_info(e.path()).provenance.total_steps,
                6 * static_cast<std::int64_t>(read_checkpoint_info(e.path()).provenance.units.size()));
    }
  EXPECT_EQ(all_units, 1);
  EXPECT_EQ(pending(), "0");
}

TEST_F(Training, BadInputsAreClearErrors) {
  auto no_seed = run_command(cmd({"pool"}));
  EXPECT_EQ(no_seed.exit_code, 1);
  EXPECT_NE(no_seed.err.find("seed model"), std::string::npos) << no_seed.err;
  auto bad_unit = run_command(cmd({"train", "--units", "alpha/0+nope/3"}));
  EXPECT_EQ(bad_unit.exit_code, 2);
  EXPECT_NE(bad_unit.err.find("nope/3"), std::string::npos) << bad_unit.err;
  auto bad_batch = run_command(mpi(2, {"train", "--train.global_batch", "3"}));
  EXPECT_EQ(bad_batch.exit_code, 2) << bad_batch.err;
  EXPECT_NE(bad_batch.err.find("--train.global_batch"), std::string::npos) << bad_batch.err;
}
