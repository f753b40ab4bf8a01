// The mixsim binary as users meet it: help, version, errors and exit codes, also under mpirun.
#include <gtest/gtest.h>

#include "test_support.hpp"

using namespace mixsim::testing;

namespace {
std::string bin() { return mixsim_binary(); }
int count_lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }
}  // namespace

TEST(Cli, HelpListsEverySubcommand) {
  auto r = run_command({bin(), "--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* c : {"prepare", "train", "pool", "truth", "merge-eval", "report", "inspect"})
    EXPECT_NE(r.out.find(std::string("  ") + c), std::string::npos) << c;
}

TEST(Cli, NoArgumentsIsAUsageError) {
  auto r = run_command({bin()});
  EXPECT_EQ(r.exit_code, 2);
}

TEST(Cli, VersionNamesGitRevision) {
  auto r = run_command({bin(), "--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("mixsim "), std::string::npos);
  EXPECT_NE(r.out.find("(git "), std::string::npos);
}

TEST(Cli, SubcommandHelpShowsItsSections) {
  auto r = run_command({bin(), "train", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--model.n_layer"), std::string::npos);
  EXPECT_NE(r.out.find("--config"), std::string::npos);
}

TEST(Cli, UnknownOptionIsOneLineNamingItWithExitCode2) {
  auto r = run_command({bin(), "train", "--bogus", "1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("mixsim: error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("--bogus"), std::string::npos) << r.err;
}

TEST(Cli, UnknownCommandIsAUsageError) {
  auto r = run_command({bin(), "frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos);
}

TEST(Cli, BadValueInJobFileNamesKeyAndFile) {
  TempDir dir;
  write_file(dir / "bad.ini", "[model]\nn_head = 3\nn_embd = 128\n");
  auto r = run_command({bin(), "train", "--config", (dir / "bad.ini").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("n_head"), std::string::npos) << r.err;
}

TEST(Cli, UsageErrorUnderMpirunIsReportedOnceAndAllRanksExit) {
  auto r = run_command({"mpirun", "-np", "2", "--oversubscribe", bin(), "train", "--bogus", "1"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(count_lines(r.err.substr(0, r.err.find("---"))), 1) << r.err;
  EXPECT_NE(r.err.find("--bogus"), std::string::npos) << r.err;
}

TEST(Cli, FailureOnOneRankStopsAllAndNamesTheRank) {
  const std::string helper = (build_dir() / "tests" / "fail_on_rank").string();
  auto r = run_command({"timeout", "60", "mpirun", "-np", "3", "--oversubscribe", helper, "1"});
  EXPECT_NE(r.exit_code, 124) << "the job hung: the failing rank did not stop the others";
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("mixsim: error: rank 1 of 3: simulated failure"), std::string::npos) << r.err;
}

TEST(Cli, InspectTakesTheFileAsAWord) {
  TempDir dir;
  write_file(dir / "x.h5", "not hdf5");
  auto r = run_command({bin(), "inspect", (dir / "x.h5").string()});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("x.h5"), std::string::npos) << r.err;
  auto two = run_command({bin(), "inspect", "a.h5", "b.h5"});
  EXPECT_EQ(two.exit_code, 2) << two.err;  // one bare word at most
  auto train = run_command({bin(), "train", "stray"});
  EXPECT_EQ(train.exit_code, 2) << train.err;  // commands without a positional take none
}
