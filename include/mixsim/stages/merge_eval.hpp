// merge-eval: scores every mixture of the space by the loss of the parameter average of its
// units' pool models (and the other proxies) on every eval set, over groups of ranks that shard
// the pool and form each average by one collective reduction; writes results.h5.
// The scheme: docs/architecture.md, "Merge-eval".
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <vector>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/config.hpp"
#include "mixsim/data/loader.hpp"
#include "mixsim/dist/communicator.hpp"
#include "mixsim/dist/group_allreduce.hpp"
#include "mixsim/model/gpt.hpp"

namespace mixsim {

// Where the results file of a job lives: merge.output, under run.out_dir when relative.
std::filesystem::path results_path(const JobConfig& config);

// Collective averaging. Each rank of a group passes the members of the mixture it holds (backend
// pointers to n floats) with their weights; every rank gets in `out` (backend memory, n floats)
// sum over the group of sum_i weights[i] * models[i], which is the weighted average when every
// member is held by exactly one rank and the weights sum to one. A rank holding no member adds
// zeros. One sum of the flat buffer through `group_sum` (make_group_allreduce: MPI on the CPU
// backend's memory, NCCL on GPUs).
void collective_average(Backend& backend, float* out, std::span<const float* const> models,
                        std::span<const float> weights, std::size_t n, GroupAllreduce& group_sum);

// Summed losses of `model` over the windows [first, last) of an eval set, `batch` windows per
// forward pass (forward only).
EvalSums evaluate_windows(Gpt& model, const EvalWindows& windows, std::size_t first,
                          std::size_t last, int batch);

// `mixsim merge-eval`; returns the exit code (kExitInterrupted after a stop signal).
int run_merge_eval(const JobConfig& config, const Communicator& world);

}  // namespace mixsim
