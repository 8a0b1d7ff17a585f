// V4 attention (spec §3) in prefill form: low-rank q with per-head RMSNorm, one shared K=V head,
// partial RoPE, the sliding window plus (CSA) top-k or (HCA) all visible compressed entries,
// per-head sinks, output de-rotation and the grouped output projection.
//
// B sequences of T tokens each start at position 0. Sliding layers use the main RoPE table, CSA
// and HCA layers the compress (YaRN) table for every rotation (pitfall 1).
// Thread-safety: reentrant; activations are owned by the caller.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/compressor.h"
#include "model/config.h"
#include "model/indexer.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

struct AttentionActivations {
  core::Tensor qr_raw;  // [B·T, q_lora_rank] x · wq_aᵀ
  core::Tensor qr;      // [B·T, q_lora_rank] RMSNorm · q_norm (also the indexer's input)
  core::Tensor q_raw;  // [B·T, nh·D] qr · wq_bᵀ (saved by the GPU path; the CPU recomputes it)
  core::Tensor q;       // [B·T, nh, D] wq_b, per-head unweighted RMSNorm, RoPE
  core::Tensor kv_raw;  // [B·T, D] x · wkvᵀ
  core::Tensor kv;      // [B·T, D] RMSNorm · kv_norm, RoPE
  CompressorActivations compressor;  // CSA and HCA layers
  IndexerActivations indexer;        // CSA layers
  core::Tensor attn;    // [B·T, nh, D] attention output, values still rotated
  core::Tensor lse;     // [B·T, nh] log-sum-exp of each softmax, sink included
  core::Tensor o;       // [B·T, nh, D] after the conjugate rotation
  core::Tensor u;       // [B·T, G·o_lora_rank] per-group projections
};

// x: [B·T, H] f32 contiguous (attn_norm output); out: [B·T, H] f32 contiguous.
// replay_index_topk: the indexer's picks to use instead of its selection (CSA), or empty.
void AttentionForward(const AttentionWeights& weights, AttentionType type,
                      const ModelConfig& config, const RopeTable& rope, int64_t batch,
                      int64_t seq_len, const core::TensorView& x, AttentionActivations* acts,
                      const core::TensorView& out,
                      const core::TensorView& replay_index_topk = core::TensorView());

}  // namespace v4rl::model
