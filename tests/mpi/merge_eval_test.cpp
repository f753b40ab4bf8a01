// merge-eval over ranks: the collective average equals the serial one, and the whole stage gives
// the same results.h5 on one rank, on P ranks in groups of 1, 2 and P (P = 2, 4 under ctest).
#include "mixsim/stages/merge_eval.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/options.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/dist/communicator.hpp"
#include "mixsim/io/checkpoint.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/io/results.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/stages/prepare.hpp"
#include "mixsim/stages/train_stages.hpp"
#include "test_support.hpp"

using namespace mixsim;
namespace fs = std::filesystem;

namespace {

// A complete checkpoint of random weights (Gpt::init with `seed`), continued from `parent`.
std::vector<float> write_model(const fs::path& path, const ModelConfig& model, std::uint64_t seed,
                               const std::string& kind, const std::vector<std::string>& units,
                               const fs::path& parent, const std::string& parent_checksum) {
  auto backend = make_cpu_backend();
  Gpt gpt(model, *backend, 1);
  gpt.init(seed);
  Checkpoint ck;
  ck.model = model;
  ck.params.resize(gpt.layout().total());
  gpt.get_params(ck.params);
  ck.provenance.kind = kind;
  ck.provenance.name = units.empty() ? "seed" : units.front();
  ck.provenance.units = units;
  ck.provenance.unit_weights.assign(units.size(), units.empty() ? 0.0 : 1.0 / double(units.size()));
  ck.provenance.parent = parent.string();
  ck.provenance.parent_checksum = parent_checksum;
  ck.provenance.complete = true;
  write_checkpoint(path, ck);
  return ck.params;
}

double max_difference(const Matrix& a, const Matrix& b) {
  EXPECT_EQ(a.rows, b.rows);
  EXPECT_EQ(a.cols, b.cols);
  double d = 0;
  for (std::size_t i = 0; i < a.values.size(); ++i) {
    EXPECT_EQ(std::isnan(a.values[i]), std::isnan(b.values[i])) << "entry " << i;
    if (!std::isnan(a.values[i])) d = std::max(d, std::fabs(a.values[i] - b.values[i]));
  }
  return d;
}

}  // namespace

TEST(MergeEvalMpi, CollectiveAverageOverTheWorldEqualsTheSerialAverage) {
  const auto world = Communicator::world();
  auto backend = make_cpu_backend();
  constexpr int K = 7;
  constexpr std::size_t n = 1000;
  // Every rank makes the same K models and weights; rank r holds models k with k % P == r.
  std::vector<std::vector<float>> models(K, std::vector<float>(n));
  std::vector<float> weights(K);
  Rng rng(42);
  for (int k = 0; k < K; ++k) {
    for (auto& v : models[k]) v = static_cast<float>(rng.normal());
    weights[k] = static_cast<float>(0.05 + rng.uniform());
  }
  std::vector<DeviceBuffer<float>> held;
  std::vector<const float*> mine;
  std::vector<float> my_weights;
  for (int k = 0; k < K; ++k)
    if (k % world.size() == world.rank()) {
      held.emplace_back(*backend, n);
      backend->upload(held.back().get(), models[k].data(), n * sizeof(float));
      mine.push_back(held.back().get());
      my_weights.push_back(weights[k]);
    }
  DeviceBuffer<float> out(*backend, n);
  std::vector<float> got(n);
  const auto group_sum = make_group_allreduce(world, *backend);
  EXPECT_EQ(group_sum->kind(), world.size() == 1 ? "local" : "mpi");
  collective_average(*backend, out.get(), mine, my_weights, n, *group_sum);
  backend->download(got.data(), out.get(), n * sizeof(float));
  for (std::size_t i = 0; i < n; ++i) {
    double exact = 0, magnitude = 0;
    for (int k = 0; k < K; ++k) {
      exact += double(weights[k]) * double(models[k][i]);
      magnitude += std::fabs(double(weights[k]) * double(models[k][i]));
    }
    // K float products and K-1 float sums in some order: each rounding is at most half an ulp of
    // a partial sum bounded by `magnitude`, so the error is below K ulps of it.
    ASSERT_NEAR(got[i], exact, K * std::numeric_limits<float>::epsilon() * magnitude) << i;
  }
}

TEST(MergeEvalMpi, OneRankAndGroupsOfOneTwoAndAllRanksGiveTheSameResults) {
  const auto world = Communicator::world();
  std::unique_ptr<mixsim::testing::TempDir> dir;
  std::string root;
  if (world.rank() == 0) {
    dir = std::make_unique<mixsim::testing::TempDir>();
    root = dir->path().string();
  }
  world.broadcast(root, 0);
  const fs::path job = fs::path(root) / "job.ini";
  if (world.rank() == 0) {
    mixsim::testing::CorpusSpec spec;
    spec.unit_tokens = 3000;  // two units for alpha and beta, one for gamma
    mixsim::testing::write_test_corpus(root, spec);
    auto config = load_job_file(job.string());
    prepare_data(config);
    // Random models stand in for trained ones: averaging and evaluation do not care.
    const auto seed = seed_path(config);
    const auto seed_params = write_model(seed, config.model, 1, "seed", {}, "", "");
    const auto crc = checksum_hex(seed_params);
    const auto data = DataFile::open(data_file_path(config));
    std::uint64_t s = 2;
    for (const auto& u : data.units())
      write_model(pool_model_path(config, u.name), config.model, s++, "pool", {u.name}, seed, crc);
    const std::vector<std::string> pair{data.units()[0].name, data.units().back().name};
    write_model(truth_model_path(config, pair[0] + "+" + pair[1]), config.model, 99, "truth", pair,
                seed, crc);
  }
  world.barrier();
  auto config = load_job_file(job.string());
  config.merge.sizes = {"1-2"};
  config.merge.save_every = 0;
  auto run = [&](const Communicator& comm, int group_size, const std::string& output) {
    config.merge.group_size = group_size;
    config.merge.output = output;
    EXPECT_EQ(run_merge_eval(config, comm), 0);
  };
  // The reference: rank 0 alone, the whole pool on one rank.
  const auto alone = world.split(world.rank(), 0);
  if (world.rank() == 0) run(alone, 1, "one_rank.h5");
  world.barrier();
  run(world, 1, "groups_of_1.h5");
  run(world, 2, "groups_of_2.h5");
  run(world, 0, "one_group.h5");
  if (world.rank() != 0) return;

  const auto out = fs::path(root) / "run";
  const auto ref = read_results(out / "one_rank.h5");
  ASSERT_TRUE(ref.complete);
  ASSERT_GE(ref.mixtures.size(), 15u);  // 5 units: 5 + 10 mixtures (+ the truth pair, among them)
  ASSERT_EQ(std::count_if(ref.mixtures.begin(), ref.mixtures.end(),
                          [](const ResultsMixture& m) { return !m.truth_checksum.empty(); }),
            1);
  for (const char* name : {"groups_of_1.h5", "groups_of_2.h5", "one_group.h5"}) {
    SCOPED_TRACE(name);
    const auto r = read_results(out / name);
    EXPECT_TRUE(r.complete);
    ASSERT_EQ(r.mixtures.size(), ref.mixtures.size());
    for (std::size_t m = 0; m < r.mixtures.size(); ++m)
      EXPECT_EQ(r.mixtures[m].name, ref.mixtures[m].name);
    if (std::string(name) == "groups_of_1.h5") {
      // Groups of one rank: each model is averaged and evaluated by one rank exactly as on one
      // rank alone (same code path and thread count): bit-identical.
      for (std::size_t p = 0; p < r.proxies.size(); ++p)
        EXPECT_TRUE(same_values(r.proxies[p].loss, ref.proxies[p].loss)) << r.proxies[p].name;
      EXPECT_TRUE(same_values(r.pool_loss, ref.pool_loss));
      EXPECT_TRUE(same_values(r.truth_loss, ref.truth_loss));
      EXPECT_EQ(r.seed_loss, ref.seed_loss);
      continue;
    }
    // Sharded groups: the average is summed across ranks in another order (float: a few ulps of
    // the weights, ~1e-7 relative), and the windows are evaluated in other batches and their
    // losses summed in another order. Both move a mean loss of ~5.5 nats by far less than 1e-6
    // (observed: ~3e-8); a misplaced or missing member would move it by more than 1e-3.
    constexpr double kTol = 1e-6;
    for (std::size_t p = 0; p < r.proxies.size(); ++p)
      EXPECT_LT(max_difference(r.proxies[p].loss, ref.proxies[p].loss), kTol) << r.proxies[p].name;
    EXPECT_LT(max_difference(r.pool_loss, ref.pool_loss), kTol);
    EXPECT_LT(max_difference(r.truth_loss, ref.truth_loss), kTol);
    for (std::size_t e = 0; e < r.seed_loss.size(); ++e)
      EXPECT_NEAR(r.seed_loss[e], ref.seed_loss[e], kTol);
  }
  // The proxies differ from each other by more than that tolerance: the comparison has teeth.
  const auto merged = *ref.proxy_index("merged"), weighted = *ref.proxy_index("weighted");
  EXPECT_GT(max_difference(ref.proxies[merged].loss, ref.proxies[weighted].loss), 1e-5);
}
