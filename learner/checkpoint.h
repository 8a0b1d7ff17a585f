// Training checkpoints: a directory per step, written atomically, that a later run resumes from
// bit-identically and that `v4rl logits` and transformers load as a model directory.
//
//   RUN/checkpoints/step-00000120/
//     config.json            the model config (HF format)
//     model.safetensors      weights, named as in the loaded checkpoint
//     optimizer/optimizer.safetensors  optimizer state (Optimizer::StateTensors); a
//                            subdirectory, so step-N/ loads as a model directory
//     trainer_state.json     {"step", "data_position", "rng_seed", "metrics": {...}}
//   RUN/checkpoints/latest   text file holding "step-00000120"
//
// A checkpoint is written into "step-N.tmp-<pid>", fsynced, then renamed; `latest` is replaced
// with WriteFileAtomic afterwards, so a crash at any point leaves the previous checkpoint intact
// and `latest` naming a complete one.
// Thread-safety: functions are not safe to call concurrently on the same directory.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "nlohmann/json.hpp"

namespace v4rl::learner {

struct TrainerState {
  int64_t step = 0;
  int64_t data_position = 0;  // examples consumed so far
  uint64_t rng_seed = 0;
  nlohmann::json metrics = nlohmann::json::object();  // last logged metrics, informational
};

struct CheckpointContents {
  std::string config_json;
  std::vector<core::NamedTensor> weights;
  std::vector<std::pair<std::string, core::TensorView>> optimizer_state;
  TrainerState trainer_state;
};

// Writes checkpoint `contents.trainer_state.step` under `checkpoints_dir` and points `latest` at
// it; returns the checkpoint's directory. Keeps at most `keep_last` checkpoints (0 = all).
absl::StatusOr<std::string> WriteCheckpoint(const std::string& checkpoints_dir,
                                            const CheckpointContents& contents, int keep_last = 0);

// The directory `latest` points at; NotFound when there is no checkpoint yet.
absl::StatusOr<std::string> LatestCheckpoint(const std::string& checkpoints_dir);

// Reads trainer_state.json of a checkpoint directory (errors name the field).
absl::StatusOr<TrainerState> ReadTrainerState(const std::string& checkpoint_dir);

}  // namespace v4rl::learner
