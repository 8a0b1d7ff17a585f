#include "model/mhc_backward.h"

#include "kernels/backward_ops.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

// Backward of the shared front of a site and of hc_head: mixes = RMS-normalised flattened
// streams · fnᵀ. Adds to dstreams [N, n, H] and dfn.
void MixesBackward(const core::TensorView& streams, const Tensor& normed, const Tensor& fn,
                   float eps, const Tensor& dmixes, const core::TensorView& dstreams,
                   const Tensor& dfn) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t width = streams.shape[1] * streams.shape[2];
  Tensor dnormed = Tensor::Zeros(DType::kF32, {num_tokens, width});
  kernels::LinearBackward(normed.view(), fn.view(), dmixes.view(), dnormed.view(), dfn.view());
  kernels::RmsNormBackward(streams.Reshape({num_tokens, width}), core::TensorView(), eps,
                           dnormed.view(), dstreams.Reshape({num_tokens, width}),
                           core::TensorView());
}

}  // namespace

void MhcPostBackward(const MhcActivations& acts, const core::TensorView& streams,
                     const core::TensorView& y, const core::TensorView& dout,
                     const core::TensorView& dstreams, const core::TensorView& dy,
                     const core::TensorView& dpost, const core::TensorView& dcomb) {
  kernels::MhcExpandBackward(streams, y, acts.post.view(), acts.comb.view(), dout, dstreams, dy,
                             dpost, dcomb);
}

void MhcPreBackward(const MhcWeights& weights, const ModelConfig& config,
                    const core::TensorView& streams, const MhcActivations& acts,
                    const core::TensorView& dcollapsed, const core::TensorView& dpost,
                    const core::TensorView& dcomb, const core::TensorView& dstreams,
                    MhcWeights* grads) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t n = config.hc_mult;
  // Collapse: the streams directly, and the pre gates.
  Tensor dpre = Tensor::Zeros(DType::kF32, {num_tokens, n});
  kernels::MhcCollapseBackward(streams, acts.pre.view(), dcollapsed, dstreams, dpre.view());
  // Gates and Sinkhorn back to the mixes, then through the projection and the RMS norm.
  Tensor dmixes = Tensor::Zeros(DType::kF32, {num_tokens, (2 + n) * n});
  kernels::MhcCoefficientsBackward(acts.mixes.view(), weights.base.view(), weights.scale.view(),
                                   config.hc_sinkhorn_iters, static_cast<float>(config.hc_eps),
                                   dpre.view(), dpost, dcomb, dmixes.view(), grads->base.view(),
                                   grads->scale.view());
  MixesBackward(streams, acts.normed, weights.fn, static_cast<float>(config.rms_norm_eps), dmixes,
                dstreams, grads->fn);
}

void HcHeadBackward(const HcHeadWeights& weights, const ModelConfig& config,
                    const core::TensorView& streams, const HcHeadActivations& acts,
                    const core::TensorView& dcollapsed, const core::TensorView& dstreams,
                    HcHeadWeights* grads) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t n = config.hc_mult;
  Tensor dpre = Tensor::Zeros(DType::kF32, {num_tokens, n});
  kernels::MhcCollapseBackward(streams, acts.pre.view(), dcollapsed, dstreams, dpre.view());
  Tensor dmixes = Tensor::Zeros(DType::kF32, {num_tokens, n});
  kernels::HcHeadPreBackward(acts.mixes.view(), weights.base.view(), weights.scale.view(),
                             dpre.view(), dmixes.view(), grads->base.view(), grads->scale.view());
  MixesBackward(streams, acts.normed, weights.fn, static_cast<float>(config.rms_norm_eps), dmixes,
                dstreams, grads->fn);
}

}  // namespace v4rl::model
