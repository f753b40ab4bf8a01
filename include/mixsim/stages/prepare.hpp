// The prepare stage: text corpora to data.h5 (base units, eval sets, the seed corpus). Rank 0
// reads and writes; the other ranks wait, so the stage runs the same under mpirun as alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "mixsim/core/config.hpp"
#include "mixsim/dist/communicator.hpp"

namespace mixsim {

struct PrepareSummary {
  std::filesystem::path output;
  bool up_to_date = false;  // the file existed with the same settings: nothing was done
  std::size_t partitions = 0, skipped_partitions = 0, units = 0, eval_sets = 0;
  std::uint64_t unit_tokens = 0, eval_tokens = 0, seed_tokens = 0;
};

// Where the data file of a job lives: data.output, under run.out_dir when relative.
std::filesystem::path data_file_path(const JobConfig& config);

// The whole stage on this process, without MPI. Throws UsageError for contradicting settings and
// Error for bad input (naming the file and line).
PrepareSummary prepare_data(const JobConfig& config);

// `mixsim prepare`: prepare_data on rank 0 while the other ranks wait; returns the exit code.
int run_prepare(const JobConfig& config, const Communicator& world);

}  // namespace mixsim
