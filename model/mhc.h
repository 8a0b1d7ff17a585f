// Manifold-constrained hyper-connections (spec §2.2-2.3) at model level: the pre step of a site
// (coefficients from the n residual streams and the collapsed sub-block input), the post step
// (expand the sub-block output, mix the streams), and the final hc_head collapse.
//
// Follows transformers' order of operations: the flattened streams are RMS-normalised (no
// weight) first, then projected by `fn`. N = number of tokens; all tensors f32.
// Thread-safety: reentrant; the activations structs are owned by the caller.
#pragma once

#include "core/tensor.h"
#include "model/config.h"
#include "model/weights.h"

namespace v4rl::model {

struct MhcActivations {
  core::Tensor normed;     // [N, n·H] streams / RMS over all n·H values
  core::Tensor mixes;      // [N, (2+n)·n] normed · fnᵀ
  core::Tensor pre;        // [N, n]
  core::Tensor post;       // [N, n]
  core::Tensor comb;       // [N, n, n] comb[j][k]: input stream j -> output stream k
  core::Tensor collapsed;  // [N, H] Σ_j pre_j · X_j, the sub-block input before its RMSNorm
};

// streams: [N, n, H] contiguous.
void MhcPreForward(const MhcWeights& weights, const ModelConfig& config,
                   const core::TensorView& streams, MhcActivations* acts);

// out = post ⊗ y + combᵀ · streams. streams, out: [N, n, H] (distinct); y: [N, H].
void MhcPostForward(const MhcActivations& acts, const core::TensorView& streams,
                    const core::TensorView& y, const core::TensorView& out);

struct HcHeadActivations {
  core::Tensor normed;     // [N, n·H]
  core::Tensor mixes;      // [N, n]
  core::Tensor pre;        // [N, n]
  core::Tensor collapsed;  // [N, H]
};

// The final collapse before the model norm: pre = sigmoid(scale·mixes + base) + hc_eps.
void HcHeadForward(const HcHeadWeights& weights, const ModelConfig& config,
                   const core::TensorView& streams, HcHeadActivations* acts);

}  // namespace v4rl::model
