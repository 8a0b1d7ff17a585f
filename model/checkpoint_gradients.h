// Gradients named and laid out like the checkpoint a model was loaded from, for writing them
// next to it (`v4rl grad`) or comparing them with another framework's: transformers names and
// merged experts (gate_up_proj [E, 2I, H] = w1 then w3 per expert, down_proj [E, H, I]) for a
// transformers checkpoint, DeepSeek names and per-expert tensors for a DeepSeek one. A quantised
// weight's gradient is that of its dequantised values, named by its weight key.
// Thread-safety: pure function.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/weights.h"

namespace v4rl::model {

struct NamedGradient {
  std::string key;      // the checkpoint's key of the parameter
  core::Tensor tensor;  // f32, the checkpoint tensor's logical shape
};

// grads: a ZeroGradients-shaped struct for `config`; checkpoint: the directory the model was
// loaded from. Returns one entry per trainable parameter in ModelParamSpecs order.
// Errors: InvalidArgument naming a trainable parameter the checkpoint has no key for.
absl::StatusOr<std::vector<NamedGradient>> CheckpointGradients(
    const ModelConfig& config, const ModelWeights& grads, const core::TensorDirectory& checkpoint);

}  // namespace v4rl::model
