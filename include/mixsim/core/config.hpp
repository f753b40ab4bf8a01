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

// [optim]: AdamW. The schedule fields are filled from [seed] or [cpt] for each run (the job file
// sets them there); OptimConfig carries them to the optimizer and into checkpoints.
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
  std::string tokenizer = "byte";          // byte: 256 byte tokens + end-of-text (V = 257)
  std::uint64_t unit_tokens = 100000;      // token budget of one base unit
  std::string split_salt = "mixsim";
  double valid_fraction = 0.05;
  double test_fraction = 0.05;
  std::string eval_split = "valid";        // valid | test: which split the eval sets are built from
  std::uint64_t eval_max_docs = 1000;
  std::uint64_t eval_max_tokens = 1000000;
  std::string eval_cut = "spread";         // spread | prefix: how a set is cut to eval_max_tokens
  bool skip_bad_files = false;             // skip (and count) unreadable/malformed input instead of failing
};

// [train]: batches, validation and checkpoints of every training stage (train, pool, truth).
struct TrainConfig {
  int global_batch = 8;         // sequences per optimizer step, over all ranks of a group
  int micro_batch = 0;          // sequences per forward/backward on one rank; 0 = the rank's share
  int val_every = 0;            // steps between validation losses; 0 = only at the end
  std::uint64_t val_tokens = 16384;  // validation tokens scored each time (spread over the sets)
  int checkpoint_every = 100;   // steps between resumable checkpoints; 0 = only at the end
  int log_every = 10;           // steps between progress lines
  bool save_optimizer = false;  // keep AdamW state in the final checkpoint
  std::string backend = "cpu";  // cpu | cpu-bf16 | cuda | cuda-bf16
  double grad_bucket_mb = 25;   // gradient sums start per this many MB during backward; 0 = after
  std::string grad_reduce = "auto";  // fp32 | bf16 | auto (bf16 with *-bf16 backends, else fp32)
};

// A learning-rate schedule of one kind of training run.
struct ScheduleConfig {
  double lr = 1e-3;
  double lr_min = 1e-4;
  std::string schedule = "cosine";  // cosine | constant | linear
  int warmup_steps = 0;
};

// [seed]: the seed model, trained from random initialisation on the seed corpus.
struct SeedConfig {
  int steps = 1000;
  ScheduleConfig schedule{1e-3, 1e-4, "cosine", 50};
  std::string output = "seed.h5";  // relative: under run.out_dir
};

// [cpt]: continued pre-training from the seed (pool and truth models, `train --init`).
struct CptConfig {
  int steps_per_unit = 0;       // optimizer steps per unit of a mixture; 0 = one pass over unit_tokens
  ScheduleConfig schedule{3e-4, 0.0, "constant", 0};
  std::string optimizer = "fresh";  // fresh (the paper) | inherit (the parent's AdamW state)
};

// [pool]: one model per base unit.
struct PoolConfig {
  std::string dir = "pool";     // relative: under run.out_dir; a unit's model is <dir>/<unit>.h5
  int group_size = 0;           // ranks per training group; 0 = all ranks in one group
};

// [truth]: models trained on the union of a mixture's units.
struct TruthConfig {
  std::vector<std::string> mixtures;  // "news/0+fiction/0", ...; units joined by '+'
  int sample = 0;                     // plus a seeded random sample of this many mixtures ...
  std::vector<std::string> sample_sizes;  // ... of these sizes (k), e.g. "2, 3"
  bool all_units = false;             // plus the mixture of all units
  std::string dir = "truth";          // relative: under run.out_dir
  int group_size = 0;                 // ranks per training group; 0 = all ranks
};

// [merge]: merge-eval: the mixture space, the proxies, and how the work is spread over ranks.
// The space is the union of everything asked for, duplicates dropped; members are base units.
struct MergeConfig {
  std::vector<std::string> mixtures;      // explicit mixtures: "news/0+fiction/0", ...
  std::vector<std::string> sizes;         // plus all mixtures of k units, k in these: "2", "2-3"
  int sample = 0;                         // plus a seeded random sample of this many mixtures ...
  std::vector<std::string> sample_sizes;  // ... of these sizes (k), e.g. "2, 3"
  std::uint64_t sample_seed = 0;          // seed of the sample; 0: split from run.seed
  bool all_subsets = false;               // plus every non-empty subset of the units
  std::uint64_t max_mixtures = 100000;    // safety limit on the size of the space
  bool truth_mixtures = true;             // plus the mixtures of the existing truth models
  bool available_units_only = false;      // use only units that have a pool model (else: error)
  std::vector<std::string> proxies{"merged", "weighted", "macro", "components"};
  std::vector<std::string> eval_sets;     // eval sets of data.h5 to score on; empty: all
  int group_size = 1;                     // ranks per group sharing the pool; 0 = all ranks
  int eval_batch = 16;                    // eval windows per forward pass on one rank
  double save_every = 60;                 // seconds between writes of results.h5; 0: every round
  std::string output = "results.h5";      // relative: under run.out_dir
  std::string backend = "cpu";            // cpu | cpu-bf16 | cuda | cuda-bf16
};

struct JobConfig {
  RunConfig run;
  ModelConfig model;
  OptimConfig optim;
  DataConfig data;
  TrainConfig train;
  SeedConfig seed;
  CptConfig cpt;
  PoolConfig pool;
  TruthConfig truth;
  MergeConfig merge;
};

}  // namespace mixsim
