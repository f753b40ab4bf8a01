// bench_data_parallel: training throughput of `mixsim train`'s loop (train_model) on the ranks
// it is started with, for the data-parallel efficiency target of the training issue. Run it with
// 1 and 2 ranks (bench/data_parallel.sh does both and prints the ratio):
//   OMP_NUM_THREADS=1 mpirun -np 2 build/bench/bench_data_parallel [--model small|tiny]
//       [--steps N] [--batch B] [--bucket-mb MB]
// --bucket-mb is train.grad_bucket_mb (default 25; 0: one gradient sum after the backward pass).
#include <fmt/format.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "args.hpp"
#include "mixsim/core/config.hpp"
#include "mixsim/core/log.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/dist/communicator.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/stages/prepare.hpp"
#include "mixsim/stages/training.hpp"

namespace fs = std::filesystem;
using namespace mixsim;

namespace {

// Random lower-case words: enough tokens for a unit of 1M tokens.
void write_corpus(const fs::path& root) {
  Rng rng(3);
  for (const char* part : {"alpha", "seed"}) {
    const fs::path dir = root / part;
    fs::create_directories(dir);
    for (int d = 0; d < 40; ++d) {
      std::string text;
      while (text.size() < 30000) {
        const int len = 2 + static_cast<int>(rng.below(7));
        for (int i = 0; i < len; ++i) text += static_cast<char>('a' + rng.below(26));
        text += ' ';
      }
      std::ofstream(dir / fmt::format("d{}.txt", d)) << text;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  const auto world = Communicator::world();
  log::init({.rank = world.rank(), .size = world.size()});
  std::string model = "small";
  int steps = 4, batch = 8;
  double bucket_mb = 25;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) model = argv[i + 1];
    if (!std::strcmp(argv[i], "--steps"))
      steps = int(bench::int_arg("bench_data_parallel", "--steps", argv[i + 1], 1, 100000));
    if (!std::strcmp(argv[i], "--batch"))
      batch = int(bench::int_arg("bench_data_parallel", "--batch", argv[i + 1], 1, 4096));
    if (!std::strcmp(argv[i], "--bucket-mb"))
      bucket_mb = bench::positive_arg("bench_data_parallel", "--bucket-mb", argv[i + 1]);
  }
  JobConfig config;
  if (model == "small") {
    config.model = {6, 6, 384, 256, 257};
  } else {
    config.model = {4, 4, 128, 64, 257};
  }
  std::string root =
      world.rank() == 0
          ? (fs::temp_directory_path() / ("mixsim-bench-dp-" + std::to_string(getpid()))).string()
          : "";
  world.broadcast(root, 0);
  config.run.out_dir = root + "/run";
  config.data.partitions = {root + "/alpha"};
  config.data.seed_corpus = root + "/seed";
  config.data.unit_tokens = 1000000;
  config.data.valid_fraction = 0.1;
  config.data.test_fraction = 0;
  config.train.global_batch = batch;
  config.train.val_tokens = 0;
  config.train.checkpoint_every = 0;
  config.train.log_every = 1000000;
  config.train.grad_bucket_mb = bucket_mb;
  if (world.rank() == 0) {
    write_corpus(root);
    prepare_data(config);
  }
  world.barrier();
  const auto data = DataFile::open(data_file_path(config));
  TrainJob job;
  job.kind = "train";
  job.name = "bench";
  job.units = {data.units().front().name};
  job.output = fs::path(config.run.out_dir) / "bench.h5";
  job.schedule = config.seed.schedule;
  job.steps = steps;
  const auto outcome = train_model(job, config, data, world);
  const double tokens = static_cast<double>(steps) * batch * config.model.context;
  if (world.rank() == 0) {
    std::printf(
        "model %s (L=%d C=%d T=%d), global batch %d, %d steps, %d rank(s) x %d thread(s): "
        "%.0f tokens/s (step loop %.2f s: compute %.2f, allreduce %.2f, optimizer %.2f; "
        "gradient sums: %s, %d started per step)\n",
        model.c_str(), config.model.n_layer, config.model.n_embd, config.model.context, batch,
        steps, world.size(), omp_get_max_threads(), tokens / outcome.step_seconds,
        outcome.step_seconds, outcome.compute_seconds, outcome.allreduce_seconds,
        outcome.optimizer_seconds, outcome.grad_sum.c_str(), outcome.grad_buckets);
    fs::remove_all(root);
  }
  return 0;
}
