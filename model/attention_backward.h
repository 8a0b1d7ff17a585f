// Backward of V4 attention (model/attention.h) for whole sequences from position 0: through the
// grouped output projection, the output de-rotation, sparse attention with sinks (window keys,
// and the compressed entries each query attended to), RoPE, the per-head and weighted RMSNorms,
// the low-rank q path, the shared K=V projection and the compressor.
//
// The lightning indexer gets no gradient from the language-model loss: its top-k picks are
// indices, and gradients reach compressed entries only through the entries selected (as in
// transformers, where the indexer's parameters end with grad None). Its parameters' gradients
// stay zero and nothing flows from it into qr or x. An indexer alignment loss (DeepSeek-V3.2's
// KL between the indexer's scores and the attention's probabilities over the selected entries)
// would add its gradient to grads->indexer from acts.indexer at the marked place in
// AttentionBackward.
// Thread-safety: reentrant; the caller owns every tensor.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

// x: [B·T, H] f32 (the forward's attn_norm output); acts: the forward's activations;
// dout: [B·T, H] f32 gradient of the attention output. Adds to dx [B·T, H] and to every
// gradient in `grads` that the LM loss reaches (the indexer's stay untouched).
void AttentionBackward(const AttentionWeights& weights, AttentionType type,
                       const ModelConfig& config, const RopeTable& rope, int64_t batch,
                       int64_t seq_len, const core::TensorView& x, const AttentionActivations& acts,
                       const core::TensorView& dout, const core::TensorView& dx,
                       AttentionWeights* grads);

}  // namespace v4rl::model
