// Backward of the KV compressor of CSA/HCA layers (model/compressor.h): from the gradient of the
// compressed entries back through the RoPE at w·ratio, the entry RMSNorm, the gated pooling and
// the two projections, to the attention input and the compressor's wkv / wgate / ape / norm.
//
// Only entries some query attended to carry gradient (attention_backward passes a zero row
// otherwise); rows of an incomplete trailing window get none. The lightning indexer's own
// compressor is never differentiated: see model/attention_backward.h.
// Thread-safety: reentrant; the caller owns every tensor.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/compressor.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

// x: [B·T, H] f32 (the forward's input); acts: the forward's activations; dentries: [B, Nc, d]
// f32 gradient of acts.entries (consumed: rotated back in place). Adds to dx [B·T, H] and to
// grads->wkv / wgate / ape / norm.
void CompressorBackward(const CompressorWeights& weights, int64_t ratio, bool overlap,
                        const RopeTable& rope, float eps, int64_t batch, int64_t seq_len,
                        const core::TensorView& x, const CompressorActivations& acts,
                        const core::Tensor& dentries, const core::TensorView& dx,
                        CompressorWeights* grads);

}  // namespace v4rl::model
