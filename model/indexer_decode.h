// The lightning indexer (spec §3.5) in incremental form: new tokens extend each sequence's
// indexer keys (through its own overlapping compressor state) and pick, per query, the index_topk
// best entries visible at its position, as IndexerForward does for whole sequences.
// Thread-safety: reentrant; the states are owned by the caller and must be distinct.
#pragma once

#include <vector>

#include "absl/types/span.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/decode_state.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

// x: [N, H] f32 (attention input); qr: [N, q_lora_rank] f32 (normalised q latent); cos, sin:
// [N, rope_head_dim / 2] f32 at the tokens' positions (compress table). Appends to
// states[s]->indexer_keys / indexer_compressor. Returns per span s the picks
// [spans[s].count, min(index_topk, entries after the step)] i32 (ascending ids, -1 padding), an
// undefined tensor when the sequence has no complete entry yet.
std::vector<core::Tensor> IndexerDecode(const IndexerWeights& weights, const ModelConfig& config,
                                        const RopeTable& rope, const core::TensorView& cos,
                                        const core::TensorView& sin,
                                        absl::Span<const DecodeSpan> spans,
                                        absl::Span<LayerDecodeState* const> states,
                                        const core::TensorView& x, const core::TensorView& qr);

}  // namespace v4rl::model
