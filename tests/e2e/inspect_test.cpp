// `mixsim inspect` on each kind of mixsim file, and on files that are not mixsim's.
#include <gtest/gtest.h>

#include "mixsim/io/hdf5.hpp"
#include "mixsim/io/results.hpp"
#include "test_support.hpp"

using namespace mixsim;
using namespace mixsim::testing;
namespace fs = std::filesystem;

namespace {

class Inspect : public ::testing::Test {
 protected:
  void SetUp() override {
    job_ = write_test_corpus(dir_.path());
    for (auto args : {std::vector<std::string>{"prepare"}, {"train"}}) {
      const auto r = run_command({mixsim_binary(), args[0], "--config", job_.string()});
      ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    }
  }
  CommandResult inspect(const fs::path& file) const {
    return run_command({mixsim_binary(), "inspect", "--file", file.string()});
  }
  TempDir dir_;
  fs::path job_;
};

void expect_lines(const CommandResult& r, const std::vector<std::string>& needles) {
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const auto& n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << n << "\n" << r.out;
}

}  // namespace

TEST_F(Inspect, DataCheckpointAndResults) {
  expect_lines(inspect(dir_ / "run" / "data.h5"),
               {"mixsim data file (format mixsim-data v1)", "units: 3 from 3 partitions",
                "alpha/0, beta/0, gamma/0", "eval sets: 4 (3 from partitions, 1 out of domain)",
                "seed corpus:", "tokenizer: byte, vocabulary 257"});
  expect_lines(
      inspect(dir_ / "run" / "seed.h5"),
      {"mixsim checkpoint (format mixsim-checkpoint v1)",
       "model: 2 layers, 2 heads, 32 channels, context 32",
       "seed model 'seed', complete, step 20/20", "parent: none", "curve: 20 train losses"});

  Results r;
  r.seed_checksum = "0000abcd";
  r.context = 32;
  r.units = {{"a/0", "a", 10, "1"}, {"b/0", "b", 10, ""}};
  r.eval_sets = {{"a", "partition", "a", 5, 4, 4, "x"}};
  r.mixtures = {{"a/0+b/0", {0, 1}, true, ""}};
  r.proxies = {{"merged", {{0.5, 0.5}}, {1, 1, {2.5}}}};
  r.pool_loss = Matrix::nan(2, 1);
  r.seed_loss = {3.0};
  r.truth_loss = Matrix::nan(1, 1);
  write_results(dir_ / "results.h5", r);
  expect_lines(inspect(dir_ / "results.h5"),
               {"mixsim results file (format mixsim-results v1)", "2 units (1 with a pool model)",
                "1 mixtures", "merged 1/1", "complete: no, 1 entries missing"});
}

TEST_F(Inspect, OtherFilesAreClearErrors) {
  {
    auto f = h5::File::create(dir_ / "plain.h5");
    f.close();
  }
  const auto plain = inspect(dir_ / "plain.h5");
  EXPECT_EQ(plain.exit_code, 1);
  EXPECT_NE(plain.err.find("not a mixsim file"), std::string::npos) << plain.err;
  const auto text = inspect(job_);
  EXPECT_EQ(text.exit_code, 1);
  EXPECT_NE(text.err.find("not an HDF5 file"), std::string::npos) << text.err;
  const auto missing = inspect(dir_ / "nope.h5");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("does not exist"), std::string::npos) << missing.err;
  const auto no_file = run_command({mixsim_binary(), "inspect"});
  EXPECT_EQ(no_file.exit_code, 2);
  EXPECT_NE(no_file.err.find("--file"), std::string::npos) << no_file.err;
}
