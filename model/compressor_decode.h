// The KV compressor (spec §3.4) in incremental form: a sequence's new tokens are appended to its
// CompressorDecodeState, and every window they complete becomes an entry, with the same
// arithmetic as CompressorForward (same pooling kernel on the same rows, same RMSNorm and RoPE at
// w · ratio), so chunked prefill and decode emit bit-identical entries.
// Thread-safety: reentrant; states and entry tensors are owned by the caller.
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "core/tensor.h"
#include "model/decode_state.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

// Values and gate scores of a decode step's tokens. x: [N, H] f32 contiguous; kv, score: set to
// new [N, c·d] f32 tensors, score with the positional bias of each token's slot
// (position mod ratio, positions from `spans`).
void CompressorProject(const CompressorWeights& weights, int64_t ratio,
                       absl::Span<const DecodeSpan> spans, const core::TensorView& x,
                       core::Tensor* kv, core::Tensor* score);

// Appends the rows of positions [first, first + S) of one sequence (kv, score: [S, c·d] f32
// contiguous, from CompressorProject) to `state`, and writes each window they complete,
// w in [first / ratio, (first + S) / ratio), to row w of `entries` ([capacity / ratio, d] f32).
// overlap: CSA-style two-series windows (c = 2), else c = 1.
void CompressorAppend(const CompressorWeights& weights, int64_t ratio, bool overlap,
                      const RopeTable& rope, float eps, int64_t first, const core::TensorView& kv,
                      const core::TensorView& score, CompressorDecodeState* state,
                      const core::TensorView& entries);

}  // namespace v4rl::model
