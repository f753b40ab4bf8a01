// merge-eval through the binary on a tiny trained pipeline (seed, pool of 7 units, truth models):
// the numbers are what they must be, h5py reads them, a killed or stopped run resumes to the
// uninterrupted results, only new work is done, and a bad pool is a clear error.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cmath>
#include <csignal>
#include <fstream>
#include <regex>

#include "mixsim/backend/ops.hpp"
#include "mixsim/data/loader.hpp"
#include "mixsim/io/checkpoint.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/io/hdf5.hpp"
#include "mixsim/io/results.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/model/layout.hpp"
#include "test_support.hpp"

using namespace mixsim;
using namespace mixsim::testing;
namespace fs = std::filesystem;

namespace {

class MergeEval : public ::testing::Test {
 protected:
  void SetUp() override {
    CorpusSpec spec;
    spec.unit_tokens = 3000;  // alpha and beta make 3 units each, gamma 1: 7 units
    job_ = write_test_corpus(dir_.path(), spec);
    for (auto args : {std::vector<std::string>{"prepare"},
                      {"train"},
                      {"pool"},
                      {"truth", "--truth.mixtures", "alpha/0+beta/0, alpha/1+gamma/0"}}) {
      const auto r = run_command(cmd(args));
      ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    }
  }
  std::vector<std::string> cmd(std::vector<std::string> args) const {
    args.insert(args.begin(), mixsim_binary());
    args.insert(args.begin() + 2, {"--config", job_.string()});
    return args;
  }
  std::vector<std::string> merge(std::vector<std::string> extra) const {
    auto c = cmd({"merge-eval"});
    c.insert(c.end(), extra.begin(), extra.end());
    return c;
  }
  fs::path run() const { return dir_ / "run"; }
  TempDir dir_;
  fs::path job_;
};

// "N of M entries to evaluate" from a merge-eval log.
std::pair<int, int> entries(const std::string& log) {
  static const std::regex re(R"((\d+) of (\d+) entries to evaluate)");
  std::smatch m;
  if (!std::regex_search(log, m, re)) return {-1, -1};
  return {std::stoi(m[1]), std::stoi(m[2])};
}

void expect_same_results(const Results& a, const Results& b) {
  ASSERT_EQ(a.mixtures.size(), b.mixtures.size());
  for (std::size_t m = 0; m < a.mixtures.size(); ++m)
    EXPECT_EQ(a.mixtures[m].name, b.mixtures[m].name);
  ASSERT_EQ(a.proxies.size(), b.proxies.size());
  for (std::size_t p = 0; p < a.proxies.size(); ++p)
    EXPECT_TRUE(same_values(a.proxies[p].loss, b.proxies[p].loss)) << a.proxies[p].name;
  EXPECT_TRUE(same_values(a.pool_loss, b.pool_loss));
  EXPECT_TRUE(same_values(a.truth_loss, b.truth_loss));
  EXPECT_EQ(a.seed_loss, b.seed_loss);
}

// Mean loss of `params` on every window of `tokens`, one window per forward pass: an evaluation
// independent of merge-eval's batching and sharding.
double reference_loss(const ModelConfig& model, const std::vector<float>& params,
                      const std::vector<Token>& tokens, std::uint64_t& scored) {
  auto backend = make_cpu_backend();
  Gpt gpt(model, *backend, 1);
  gpt.set_params(params);
  const std::size_t T = static_cast<std::size_t>(model.context);
  EvalWindows windows(tokens, T);
  std::vector<std::int32_t> in(T), tg(T);
  EvalSums sums;
  for (std::size_t w = 0; w < windows.count(); ++w) {
    windows.fill(w, in, tg);
    const auto s = gpt.evaluate(in.data(), tg.data(), 1, static_cast<int>(T));
    sums.loss_sum += s.loss_sum;
    sums.tokens += s.tokens;
  }
  scored = sums.tokens;
  return sums.mean();
}

const char* kH5pyCheck = R"(
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f.attrs["format"] == "mixsim-results" and f.attrs["format_version"] == 1
assert f.attrs["complete"] == 1
units = list(f["units/names"].asstr()[:])
sets = list(f["eval_sets/names"].asstr()[:])
names = list(f["mixtures/names"].asstr()[:])
off, mem = f["mixtures/offsets"][:], f["mixtures/members"][:]
pool = f["pool/loss"][:]
assert pool.shape == (len(units), len(sets)) and not np.isnan(pool).any()
assert f["seed/loss"].shape == (len(sets),)
for p in f.attrs["proxies"]:
    loss, w = f["proxies/" + p + "/loss"][:], f["proxies/" + p + "/weights"][:]
    assert loss.shape == (len(names), len(sets)) and not np.isnan(loss).any(), p
    for i, name in enumerate(names):
        m = mem[off[i]:off[i + 1]]
        assert "+".join(units[u] for u in m) == name
        assert abs(w[off[i]:off[i + 1]].sum() - 1) < 1e-12
comp, merged = f["proxies/components/loss"][:], f["proxies/merged/loss"][:]
for i in range(len(names)):
    m = mem[off[i]:off[i + 1]]
    assert np.allclose(comp[i], pool[m].mean(axis=0), rtol=0, atol=1e-12)
    if len(m) == 1:
        assert (merged[i] == pool[m[0]]).all()
truth, has = f["truth/loss"][:], f["truth/checksums"].asstr()[:] != ""
assert has.sum() == 2 and not np.isnan(truth[has]).any() and np.isnan(truth[~has]).all()
bpb = merged * f["eval_sets/scored_tokens"][:] / (np.log(2) * f["eval_sets/bytes"][:])
assert np.isfinite(bpb).all() and (bpb > 0).all()
print("h5py read", len(names), "mixtures x", len(sets), "eval sets")
)";

}  // namespace

TEST_F(MergeEval, ScoresAreTheLossesOfTheAveragedModelsAndH5pyReadsThem) {
  const auto r = run_command(merge({"--merge.sizes", "1-2"}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const auto res = read_results(run() / "results.h5");
  ASSERT_EQ(res.units.size(), 7u);
  ASSERT_EQ(res.mixtures.size(), 7u + 21u);  // the truth mixtures are pairs, among them
  EXPECT_TRUE(res.complete);
  // 3 evaluated proxies x 28 mixtures, 7 pool models, the seed, 2 truth models; 4 eval sets.
  const int total = (3 * 28 + 7 + 1 + 2) * 4;
  EXPECT_EQ(entries(r.out), std::make_pair(total, total)) << r.out;

  // The seed's score is the mean loss over every window of each eval set, every token but the
  // first scored once. Tolerance: merge-eval evaluates 16 windows per pass, this check one, so
  // the float matmuls round differently (~1e-7 relative per token).
  const auto data = DataFile::open(run() / "data.h5");
  const auto seed = read_checkpoint(run() / "seed.h5");
  for (std::size_t e = 0; e < res.eval_sets.size(); ++e) {
    const auto tokens = data.eval_tokens(res.eval_sets[e].name);
    std::uint64_t scored = 0;
    EXPECT_NEAR(res.seed_loss[e], reference_loss(seed.model, seed.params, tokens, scored), 1e-6);
    EXPECT_EQ(scored, tokens.size() - 1);
    EXPECT_EQ(res.eval_sets[e].scored_tokens, tokens.size() - 1);
  }
  // merged for a pair is the loss of the uniform average of the two pool models.
  const auto a = read_checkpoint(run() / "pool" / "alpha_0.h5");
  const auto b = read_checkpoint(run() / "pool" / "gamma_0.h5");
  std::vector<float> avg(a.params.size());
  for (std::size_t i = 0; i < avg.size(); ++i) avg[i] = 0.5f * a.params[i] + 0.5f * b.params[i];
  const auto row = *res.mixture_index("alpha/0+gamma/0");
  const auto merged = *res.proxy_index("merged");
  std::uint64_t scored = 0;
  const auto set = res.eval_sets[0].name;
  EXPECT_NEAR(res.proxies[merged].loss.at(row, 0),
              reference_loss(a.model, avg, data.eval_tokens(set), scored), 1e-6);
  // The average differs from both members by much more than that tolerance.
  EXPECT_GT(std::fabs(res.proxies[merged].loss.at(row, 0) - res.pool_loss.at(0, 0)), 1e-4);

  write_file(dir_ / "check.py", kH5pyCheck);
  const auto py = run_command(
      {"/usr/bin/python3", (dir_ / "check.py").string(), (run() / "results.h5").string()});
  EXPECT_EQ(py.exit_code, 0) << py.out << py.err;
  EXPECT_NE(py.out.find("h5py read 28 mixtures x 4 eval sets"), std::string::npos) << py.out;

  // A second run has nothing to do.
  const auto again = run_command(merge({"--merge.sizes", "1-2"}));
  EXPECT_EQ(entries(again.out).first, 0) << again.out;
}

TEST_F(MergeEval, SigkillThenRerunGivesTheUninterruptedResults) {
  const std::vector<std::string> space = {"--merge.sizes", "1-3", "--merge.save_every", "0"};
  // The reference writes once at the end: how often a run saves changes no value.
  const std::vector<std::string> ref = {"--merge.sizes", "1-3", "--merge.output", "reference.h5"};
  ASSERT_EQ(run_command(merge(ref)).exit_code, 0);
  {
    TempDir logs;
    BackgroundCommand job(merge(space), logs.path());
    ASSERT_TRUE(wait_until(job, [&] { return fs::exists(run() / "results.h5"); }))
        << job.wait().err;
    job.signal(SIGKILL);
    EXPECT_EQ(job.wait().exit_code, 128 + SIGKILL);
  }
  const auto partial = read_results(run() / "results.h5");
  ASSERT_FALSE(partial.complete) << "the run finished before it was killed";
  const auto rerun = run_command(merge(space));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.err;
  const auto [todo, total] = entries(rerun.out);
  EXPECT_GT(todo, 0);
  EXPECT_LT(todo, total);
  EXPECT_EQ(static_cast<std::size_t>(todo), partial.missing());
  const auto a = read_results(run() / "reference.h5");
  const auto b = read_results(run() / "results.h5");
  EXPECT_TRUE(b.complete);
  expect_same_results(a, b);
}

TEST_F(MergeEval, SigtermToEveryRankWritesTheResultsAndExitsWithCode3) {
  const std::vector<std::string> space = {"--merge.sizes",      "1-3", "--merge.group_size", "2",
                                          "--merge.save_every", "0"};
  {
    TempDir logs;
    BackgroundCommand job(under_mpirun(2, merge(space)), logs.path());
    ASSERT_TRUE(wait_until(job, [&] { return fs::exists(run() / "results.h5"); }))
        << job.wait().err;
    ASSERT_EQ(job.signal_children(SIGTERM), 2);
    const auto r = job.wait();
    EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
    EXPECT_NE(r.out.find("stop signal received"), std::string::npos) << r.out;
  }
  const auto partial = read_results(run() / "results.h5");
  EXPECT_FALSE(partial.complete);
  EXPECT_GT(partial.missing(), 0u);
  // The rest on one rank.
  const auto rerun = run_command(merge({"--merge.sizes", "1-3"}));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.err;
  EXPECT_EQ(static_cast<std::size_t>(entries(rerun.out).first), partial.missing());
  EXPECT_TRUE(read_results(run() / "results.h5").complete);
}

TEST_F(MergeEval, NewUnitsAndNewMixturesEvaluateOnlyWhatIsNew) {
  // First without gamma/0's pool model: a missing model is an error unless asked otherwise.
  fs::rename(run() / "pool" / "gamma_0.h5", run() / "gamma_0.bak");
  const auto refused = run_command(merge({"--merge.sizes", "2"}));
  EXPECT_EQ(refused.exit_code, 1);
  const auto first =
      run_command(merge({"--merge.sizes", "2", "--merge.available_units_only", "true"}));
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;
  const auto before = read_results(run() / "results.h5");
  EXPECT_EQ(before.mixtures.size(), 15u);  // pairs of the 6 units with a model
  EXPECT_TRUE(before.complete);

  // gamma/0's model arrives: its pool row, its 6 pairs (3 evaluated proxies) and the truth
  // model alpha/1+gamma/0 (now in the space), on 4 eval sets.
  fs::rename(run() / "gamma_0.bak", run() / "pool" / "gamma_0.h5");
  const auto second = run_command(merge({"--merge.sizes", "2"}));
  ASSERT_EQ(second.exit_code, 0) << second.out << second.err;
  EXPECT_EQ(entries(second.out).first, 4 * (1 + 6 * 3 + 1)) << second.out;
  const auto after = read_results(run() / "results.h5");
  for (std::size_t m = 0; m < before.mixtures.size(); ++m) {
    const auto row = after.mixture_index(before.mixtures[m].name);
    ASSERT_TRUE(row.has_value());
    for (std::size_t e = 0; e < 4; ++e)
      EXPECT_EQ(after.proxies[0].loss.at(*row, e),
                before.proxies[0].loss.at(m, e));  // kept, bit for bit
  }

  // One more mixture: only its entries.
  const auto third =
      run_command(merge({"--merge.sizes", "2", "--merge.mixtures", "gamma/0+beta/2+alpha/0"}));
  ASSERT_EQ(third.exit_code, 0) << third.err;
  EXPECT_EQ(entries(third.out).first, 3 * 4) << third.out;
  EXPECT_TRUE(
      read_results(run() / "results.h5").mixture_index("alpha/0+beta/2+gamma/0").has_value());
}

TEST_F(MergeEval, ABadPoolIsAClearErrorNamingTheFile) {
  const auto victim = run() / "pool" / "beta_1.h5";
  const auto backup = dir_ / "beta_1.good";
  fs::copy_file(victim, backup);
  auto expect_error = [&](const std::string& what, const std::vector<std::string>& needles) {
    SCOPED_TRACE(what);
    const auto r = run_command(merge({"--merge.sizes", "2"}));
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    for (const auto& n : needles)
      EXPECT_NE(r.err.find(n), std::string::npos) << "no '" << n << "' in: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
    fs::copy_file(backup, victim, fs::copy_options::overwrite_existing);
  };
  const auto good = read_checkpoint(victim);

  fs::remove(victim);
  expect_error("missing",
               {"beta/1", victim.string(), "mixsim pool", "--merge.available_units_only"});

  auto incomplete = good;
  incomplete.provenance.complete = false;
  write_checkpoint(victim, incomplete);
  expect_error("incomplete", {victim.string(), "incomplete"});

  auto other_parent = good;
  other_parent.provenance.parent_checksum = "0badc0de";
  write_checkpoint(victim, other_parent);
  expect_error("other seed", {victim.string(), "not continued from the seed", "0badc0de"});

  auto other_shape = good;
  other_shape.model.n_embd = 16;
  other_shape.model.n_head = 2;
  other_shape.params.assign(ParamLayout(other_shape.model).total(), 0.01f);
  write_checkpoint(victim, other_shape);
  expect_error("other shape", {victim.string(), "model mismatch"});

  {  // corrupt: one byte of the token embedding flipped on disk
    haddr_t offset = 0;
    {
      const auto f = h5::File::open(victim);
      offset = H5Dget_offset(f.open_dataset("params/wte").id());
    }
    ASSERT_NE(offset, HADDR_UNDEF);
    std::fstream file(victim, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(offset + 1000));
    char c = 0;
    file.get(c);
    file.seekp(static_cast<std::streamoff>(offset + 1000));
    file.put(static_cast<char>(c ^ 0x10));
  }
  expect_error("corrupt", {victim.string(), "corrupt"});

  fs::resize_file(victim, fs::file_size(victim) / 2);
  expect_error("truncated", {victim.string()});

  // And with the good file back, it runs.
  EXPECT_EQ(run_command(merge({"--merge.sizes", "2"})).exit_code, 0);
}
