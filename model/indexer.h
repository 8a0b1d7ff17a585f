// The lightning indexer of CSA layers (spec §3.5): its own overlapping compressor produces
// index_head_dim-wide keys, queries come from the attention's q latent, and each query keeps the
// index_topk best visible compressed entries. Reference precision: no Hadamard rotation and no
// FP4 simulation (transformers does neither; q·k is unchanged by the rotation).
// Thread-safety: reentrant; activations are owned by the caller.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/compressor.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

struct IndexerActivations {
  CompressorActivations keys;  // keys.entries: [B, Nc, index_head_dim]
  core::Tensor q;              // [B·T, index_n_heads, index_head_dim] after RoPE
  core::Tensor weights;        // [B·T, index_n_heads] x · weights_projᵀ · index_n_heads^-0.5
  core::Tensor topk;           // [B, T, min(index_topk, Nc)] i32: ascending picks, -1 padding
};

// x: [B·T, H] f32 (attention input); qr: [B·T, q_lora_rank] f32 (normalised q latent).
// replay_topk: [B, T, min(index_topk, Nc)] i32 picks used instead of the selection (index
// replay, checked by the caller), or an empty view.
void IndexerForward(const IndexerWeights& weights, const ModelConfig& config, const RopeTable& rope,
                    int64_t batch, int64_t seq_len, const core::TensorView& x,
                    const core::TensorView& qr, IndexerActivations* acts,
                    const core::TensorView& replay_topk = core::TensorView());

}  // namespace v4rl::model
