// Backward of the mHC sites and of the hc_head collapse (model/mhc.h): gradients of the residual
// streams and of each site's fn / base / scale, including the Sinkhorn projection of the comb
// matrix (kernels/cpu/mhc_backward.h walks back through all its iterations).
//
// A site's backward is split like its forward: MhcPostBackward (expand + mix) runs first and
// yields the sub-block output gradient dy plus dpost / dcomb; the sub-block's own backward turns
// dy into the gradient of the collapsed input; MhcPreBackward then finishes the site.
// All gradients are ADDED to their outputs (zeroed by the caller); N = number of tokens, f32.
// Thread-safety: reentrant; the caller owns every tensor.
#pragma once

#include "core/tensor.h"
#include "model/config.h"
#include "model/mhc.h"
#include "model/weights.h"

namespace v4rl::model {

// Backward of MhcPostForward (out = post ⊗ y + combᵀ · streams).
// streams, dout, dstreams: [N, n, H]; y, dy: [N, H]; dpost: [N, n]; dcomb: [N, n, n].
void MhcPostBackward(const MhcActivations& acts, const core::TensorView& streams,
                     const core::TensorView& y, const core::TensorView& dout,
                     const core::TensorView& dstreams, const core::TensorView& dy,
                     const core::TensorView& dpost, const core::TensorView& dcomb);

// Backward of MhcPreForward given the gradients of its outputs: dcollapsed [N, H], dpost [N, n],
// dcomb [N, n, n] (from MhcPostBackward). Adds to dstreams [N, n, H] and to grads->fn / base /
// scale (shapes of MhcWeights).
void MhcPreBackward(const MhcWeights& weights, const ModelConfig& config,
                    const core::TensorView& streams, const MhcActivations& acts,
                    const core::TensorView& dcollapsed, const core::TensorView& dpost,
                    const core::TensorView& dcomb, const core::TensorView& dstreams,
                    MhcWeights* grads);

// Backward of HcHeadForward. streams, dstreams: [N, n, H]; dcollapsed: [N, H]. Adds to dstreams
// and to grads->fn / base / scale.
void HcHeadBackward(const HcHeadWeights& weights, const ModelConfig& config,
                    const core::TensorView& streams, const HcHeadActivations& acts,
                    const core::TensorView& dcollapsed, const core::TensorView& dstreams,
                    HcHeadWeights* grads);

}  // namespace v4rl::model
