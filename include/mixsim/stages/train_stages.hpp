// The training subcommands: `train` (the seed, or any mixture), `pool` (one model per base unit
// from the seed) and `truth` (one model per mixture on the union of its units). Work is spread
// over groups of ranks; each group trains its models data parallel.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "mixsim/core/config.hpp"
#include "mixsim/core/options.hpp"
#include "mixsim/dist/communicator.hpp"

namespace mixsim {

// Paths of a job's outputs (relative settings resolve under run.out_dir).
std::filesystem::path seed_path(const JobConfig& config);
std::filesystem::path pool_model_path(const JobConfig& config, const std::string& unit);
std::filesystem::path truth_model_path(const JobConfig& config, const std::string& mixture);

// The truth mixtures of a job: the listed ones, then the seeded random sample, then (if asked)
// all units; duplicates dropped. Unknown units are a UsageError naming them.
std::vector<std::vector<std::string>> truth_mixtures(const JobConfig& config,
                                                     const std::vector<std::string>& all_units);

// Assigns jobs of the given costs to `groups` groups: longest first, each to the least loaded
// group (ties: the lowest group). Deterministic, so every rank computes the same plan.
std::vector<int> assign_to_groups(const std::vector<double>& costs, int groups);

void add_train_options(po::options_description& d);
void add_shard_option(po::options_description& d);  // --shard I/N for pool and truth
int run_train(const JobConfig& config, const po::variables_map& vm, const Communicator& world);
int run_pool(const JobConfig& config, const po::variables_map& vm, const Communicator& world);
int run_truth(const JobConfig& config, const po::variables_map& vm, const Communicator& world);

}  // namespace mixsim
