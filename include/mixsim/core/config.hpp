// Every setting of a mixsim job in one place, with its default. A job file (jobs/*.ini) sets
// them by section ([model] n_layer = 4 is model.n_layer); the command line overrides any key
// (--model.n_layer 4). core/options.cpp maps these fields to options and checks their ranges.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mixsim {

// [run]: where outputs go and how the process runs.
struct RunConfig {
  std::string name = "job";     // the job's name, used in logs and default paths
  std::string out_dir = "runs/job";  // every stage's outputs live under this directory
  std::uint64_t seed = 1234;    // master seed; every random stream is split from it
  int threads = 0;              // OpenMP threads per rank; 0 = OMP_NUM_THREADS or all cores
};

// [model]: the GPT-2 style decoder.
struct ModelConfig {
  int n_layer = 4;
  int n_head = 4;
  int n_embd = 128;
  int context = 64;       // T: the longest sequence the model sees
  int vocab_size = 257;   // V: 256 bytes + end-of-text; padded to a multiple of 64 in memory
};

// [optim]: AdamW and the learning-rate schedule.
struct OptimConfig {
  double lr = 1e-3;             // peak learning rate
  double lr_min = 1e-4;         // floor of the cosine / linear schedules
  std::string schedule = "cosine";  // cosine (warmup + cosine to lr_min) | constant | linear
  int warmup_steps = 0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;    // decoupled; not applied to biases and LayerNorm weights
  double grad_clip = 1.0;       // clip by global gradient norm; 0 = off
};

// [data]: corpora, base units and eval sets (see the prepare stage).
struct DataConfig {
  std::string root;                        // a directory whose subdirectories are partitions
  std::vector<std::string> partitions;     // or an explicit list of partition directories
  std::string seed_corpus;                 // directory of the seed model's corpus
  std::vector<std::string> eval_dirs;      // extra out-of-domain eval sets (directories)
  std::string output = "data.h5";          // relative paths are under run.out_dir
  std::string jsonl_field = "text";
  std::uint64_t unit_tokens = 100000;      // token budget of one base unit
  std::string split_salt = "mixsim";
  double valid_fraction = 0.05;
  double test_fraction = 0.05;
  std::string eval_split = "valid";        // valid | test: which split the eval sets are built from
  std::uint64_t eval_max_docs = 1000;
  std::uint64_t eval_max_tokens = 1000000;
  bool skip_bad_files = false;             // skip (and count) unreadable/malformed input instead of failing
};

struct JobConfig {
  RunConfig run;
  ModelConfig model;
  OptimConfig optim;
  DataConfig data;
};

}  // namespace mixsim
