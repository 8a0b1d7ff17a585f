// The KV compressor of CSA/HCA layers and of the lightning indexer (spec §3.4): projects each
// token to values and gate scores, pools every complete window of `ratio` tokens with a
// per-channel softmax (CSA: overlapping windows of 2·ratio slots), RMS-normalises the pooled
// entry and rotates its trailing rope dims at position w·ratio.
//
// Prefill form: whole sequences from position 0; entries exist only for complete windows
// (floor(T / ratio) per sequence). The pooling kernel also serves decode, which keeps the rows of
// the open (and, for CSA, the previous) window.
// Thread-safety: reentrant; activations are owned by the caller.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

struct CompressorActivations {
  core::Tensor kv;       // [B·T, c·d] x · wkvᵀ
  core::Tensor score;    // [B·T, c·d] x · wgateᵀ + ape[t mod ratio]
  core::Tensor pooled;   // [B, Nc, d] gated pool of each complete window, Nc = T / ratio
  core::Tensor entries;  // [B, Nc, d] RMSNorm(pooled) · norm, RoPE at position w · ratio
};

// x: [B·T, H] f32 contiguous, the normalised attention input of B sequences of T tokens.
// overlap: CSA-style two-series windows (c = 2), else c = 1.
void CompressorForward(const CompressorWeights& weights, int64_t ratio, bool overlap,
                       const RopeTable& rope, float eps, int64_t batch, int64_t seq_len,
                       const core::TensorView& x, CompressorActivations* acts);

}  // namespace v4rl::model
