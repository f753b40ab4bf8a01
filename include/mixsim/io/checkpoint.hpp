// Model checkpoints in HDF5: the model config as attributes, one dataset per parameter tensor in
// the canonical layout order, optional AdamW state, the training provenance and the loss curve.
// Written atomically; reading validates everything and names the file and what is wrong.
// Layout: docs/file-formats.md, "Checkpoints".
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixsim/core/config.hpp"

namespace mixsim {

inline constexpr const char* kCheckpointFormat = "mixsim-checkpoint";
inline constexpr std::int64_t kCheckpointFormatVersion = 1;

// Where a model came from and how far its training got.
struct Provenance {
  std::string kind;                     // "seed" | "pool" | "truth" | "train"
  std::string name;                     // "seed", a unit ("news/0") or a mixture name
  std::vector<std::string> units;       // the units trained on (empty: the seed corpus)
  std::vector<double> unit_weights;     // each unit's share of the training windows
  std::string data_file;                // data.h5 it was trained from
  std::uint64_t data_seed = 0;          // seed of the data order
  std::int64_t steps_done = 0;
  std::int64_t total_steps = 0;
  std::uint64_t tokens_seen = 0;        // training tokens (targets) over all ranks
  std::int64_t global_batch = 0;        // sequences per step
  std::int64_t context = 0;             // tokens per sequence
  OptimConfig optim;                    // schedule and AdamW settings
  std::string parent;                   // checkpoint it continued from ("" for random init)
  std::string parent_checksum;          // that checkpoint's params_crc32
  std::string version;                  // mixsim version and git revision that wrote it
  int ranks = 1;                        // data-parallel ranks (bit-identity holds per rank count)
  bool complete = false;                // the run reached total_steps
};

struct LossCurve {
  std::vector<std::int64_t> train_step;
  std::vector<float> train_loss;        // mean loss of the global batch at that step
  std::vector<std::int64_t> valid_step;
  std::vector<float> valid_loss;        // mean loss of the validation tokens
};

struct OptimizerState {
  std::int64_t steps = 0;               // AdamW steps taken (bias correction)
  std::vector<float> m, v;              // the moments, in the parameter layout
};

struct Checkpoint {
  ModelConfig model;
  std::vector<float> params;            // the whole parameter buffer, canonical layout
  std::optional<OptimizerState> optimizer;
  Provenance provenance;
  LossCurve curve;
};

// The lightweight part: config, provenance and checksum, without reading tensors.
struct CheckpointInfo {
  ModelConfig model;
  Provenance provenance;
  std::string params_checksum;
  bool has_optimizer = false;
};

// CRC-32 (zlib) of a float buffer's bytes, as 8 hex digits.
std::string checksum_hex(const std::vector<float>& values);

// Writes under a temporary name, then renames into place.
void write_checkpoint(const std::filesystem::path& path, const Checkpoint& checkpoint);

// Reads and validates: format and version, model config, every tensor's name, shape, dtype,
// finite values and the checksums. `with_optimizer` also loads the AdamW state (an Error if the
// file has none). Any problem is an Error naming the file and what is wrong.
Checkpoint read_checkpoint(const std::filesystem::path& path, bool with_optimizer = false);
CheckpointInfo read_checkpoint_info(const std::filesystem::path& path);

// Throws Error naming both files when two model configs differ (e.g. a pool of mixed shapes).
void require_same_model(const ModelConfig& a, const ModelConfig& b, const std::string& what_a,
                        const std::string& what_b);

}  // namespace mixsim
