// V4 attention (spec §3) in incremental form over a ragged decode step: every sequence appends
// its new tokens (a prefill chunk of any size, or one decoded token) at its own position, reading
// and updating its LayerDecodeState: the window ring, compressed entries, indexer keys and the
// compressors' partial windows. Same arithmetic as AttentionForward (same kernels, keys in the
// same order), so its output equals the full forward's for the same positions.
// Thread-safety: reentrant; the states are owned by the caller and must be distinct.
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/decode_state.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

// One layer's attention for the step. x: [N, H] f32 contiguous (attn_norm output), N = Σ counts;
// cos, sin: [N, rope_head_dim / 2] f32, row i at token i's position in this layer's RoPE table;
// spans[s] and states[s] describe sequence s (states[s] = that sequence's state of this layer,
// already holding span.position tokens, with room for the new ones); out: [N, H] f32 contiguous.
void AttentionDecode(const AttentionWeights& weights, AttentionType type,
                     const ModelConfig& config, const RopeTable& rope, const core::TensorView& cos,
                     const core::TensorView& sin, absl::Span<const DecodeSpan> spans,
                     absl::Span<LayerDecodeState* const> states, const core::TensorView& x,
                     const core::TensorView& out);

}  // namespace v4rl::model
