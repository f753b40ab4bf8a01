// Training one model, data parallel over a group of ranks: the loop shared by the train, pool
// and truth stages. Resumable (a partial checkpoint beside the output), preemptible (SIGTERM,
// SIGUSR1), and deterministic: a killed and resumed run ends with the weights of an
// uninterrupted one (bit-identical on CPU for the same rank and thread counts).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixsim/core/config.hpp"
#include "mixsim/dist/communicator.hpp"
#include "mixsim/io/data_file.hpp"

namespace mixsim {

struct TrainJob {
  std::string kind;                 // "seed" | "pool" | "truth" | "train" (provenance)
  std::string name;                 // "seed", a unit name or a mixture name
  std::vector<std::string> units;   // the mixture; empty: the seed corpus
  std::filesystem::path output;     // the final checkpoint
  std::filesystem::path init;       // parent checkpoint; empty: random initialisation
  bool inherit_optimizer = false;   // continue the parent's AdamW state (needs it in the file)
  ScheduleConfig schedule;
  std::int64_t steps = 0;
  std::uint64_t data_seed = 0;      // data order; the init seed for random initialisation
};

struct TrainOutcome {
  bool skipped = false;             // the output already existed, complete
  bool interrupted = false;         // a stop signal arrived; a partial checkpoint was written
  std::int64_t steps_run = 0;       // steps this call ran (0 when skipped)
  double seconds = 0;
  double step_seconds = 0;          // time in the step loop alone (no loading, no final write)
  // Where the step loop's time went, on this rank: forward + backward, the gradient allreduce
  // (including waiting for slower ranks), and the optimizer step.
  double compute_seconds = 0, allreduce_seconds = 0, optimizer_seconds = 0;
  // How the gradients were summed: the GroupAllreduce kind (local, mpi, nccl, mpi-staged), and
  // per step the sums started during the backward pass (0 with train.grad_bucket_mb = 0: one
  // sum of the whole buffer after it) and the parts they covered.
  std::string grad_sum;
  std::string grad_format;  // fp32 or bf16 on the wire (train.grad_reduce)
  int grad_buckets = 0, grad_parts = 0;
  double final_train_loss = 0;
  double final_valid_loss = 0;      // NaN when there was no validation data
};

// The partial (resumable) checkpoint of a run whose final checkpoint is `output`.
std::filesystem::path partial_path(const std::filesystem::path& output);

// A file name for a mixture or unit name: '/' becomes '_' ("news/0+fiction/1" -> "news_0+fiction_1");
// names longer than 120 characters keep 96 and add a 16-digit hash of the whole name.
std::string file_stem(const std::string& name);

// A mixture's name: its units joined by '+'.
std::string mixture_name(const std::vector<std::string>& units);

// Steps of continued pre-training for a mixture of k units (cpt.steps_per_unit, or one pass
// over data.unit_tokens when it is 0).
std::int64_t cpt_steps(const JobConfig& config, std::size_t k);

// Trains `job` on the ranks of `group` (all must call it). Rank 0 of the group writes the files.
// Between steps it polls StopSignals (install them once for the whole stage, so that a signal
// between two models is not lost): on a stop it writes the partial checkpoint and returns.
TrainOutcome train_model(const TrainJob& job, const JobConfig& config, const DataFile& data,
                         const Communicator& group);

}  // namespace mixsim
