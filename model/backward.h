// Backward pass of the V4 model in reference precision (fp32 on the CPU): explicit backward
// functions paired with each forward piece (llm.c style, no tape), consuming the activations
// Forward saved (model/forward.h) or recomputing them block by block.
//
// What is trained: every parameter of the main model except the selection bias (gate.bias) and
// tid2eid. Gradients reach top-k selections (router, indexer) only through the selected entries;
// the lightning indexer gets none from the LM loss (model/attention_backward.h); MTP blocks are
// not part of the LM loss. Gradients live in a ModelWeights-shaped struct (llm.c's grads mirror
// its parameters), zeroed by ZeroGradients and ADDED to by Backward, so micro-batches accumulate.
//
// Recomputation: with BackwardOptions::recompute the forward keeps only each block's input
// streams ([B·T, n, H] per layer) and the backward re-runs one block's forward at a time, with
// the forward's routing replayed, before differentiating it: activation memory is one block's
// instead of all of them, for one extra forward.
// Thread-safety: reentrant; concurrent calls need distinct gradient structs.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/config.h"
#include "model/forward.h"
#include "model/params.h"
#include "model/weights.h"

namespace v4rl::model {

struct BackwardOptions {
  // Recompute block activations from the saved block inputs (Forward with save_block_inputs and
  // return_routing) instead of reading them (Forward with save_activations).
  bool recompute = false;
};

// Whether the LM loss trains this parameter (false for tid2eid and gate.bias).
bool IsTrainable(const ParamSpec& spec);

// f32 zeros for every trainable parameter of the main model (no MTP), shaped as in
// ModelParamSpecs; the other slots stay undefined.
ModelWeights ZeroGradients(const ModelConfig& config);

// Backward of BlockForward: acts from the forward; dstreams_out: [B·T, n, H] f32 gradient of the
// block output. Adds to `grads` (one layer's) and returns dL/d(streams_in) [B·T, n, H] f32.
core::Tensor BlockBackward(const LayerWeights& layer, const ModelConfig& config,
                           const RopeTable& rope, int64_t batch, int64_t seq_len,
                           const BlockActivations& acts, const core::TensorView& dstreams_out,
                           LayerWeights* grads);

// Backward of Forward. input_ids: the [B, T] ids the forward ran on (already validated by it);
// forward: its output, made with return_hidden, return_streams and either save_activations or,
// with options.recompute, save_block_inputs + return_routing; dlogits: [B, T, V] f32 gradient of
// the loss w.r.t. the logits. Adds to `grads` (from ZeroGradients).
// CHECK-fails when `forward` lacks what this needs (a caller bug).
void Backward(const Model& model, const core::TensorView& input_ids, const ForwardOutput& forward,
              const core::TensorView& dlogits, const BackwardOptions& options, ModelWeights* grads);

}  // namespace v4rl::model
