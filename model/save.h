// Writing a model directory that `v4rl logits` / LoadWeights and transformers both read:
// config.json in transformers' DeepseekV4Config format and model.safetensors with DeepSeek's hub
// tensor names, routed experts one tensor per expert ("layers.3.ffn.experts.7.w1.weight"), all
// f32, exactly as the official checkpoints name them.
// Thread-safety: pure functions; SaveModel writes files atomically (temp file + rename).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/safetensors.h"
#include "model/config.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace v4rl::model {

// transformers' config.json fields for `config`; ParseModelConfig reads it back unchanged.
nlohmann::json ModelConfigToJson(const ModelConfig& config);

// The tensors of `weights` under hub names (per-expert routed experts, tid2eid as i32), views of
// the weights' buffers or of `storage` (which owns the per-expert copies). MTP tensors are
// included when `weights` has MTP blocks.
std::vector<core::NamedTensor> HubNamedTensors(const ModelConfig& config,
                                               const ModelWeights& weights,
                                               std::vector<core::Tensor>* storage);

// Writes DIR/config.json and DIR/model.safetensors (creating DIR).
absl::Status SaveModel(const std::string& directory, const ModelConfig& config,
                       const ModelWeights& weights);

}  // namespace v4rl::model
