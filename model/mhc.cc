#include "model/mhc.h"

#include "kernels/ops.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

// Flattens [N, n, H] to [N, n·H] and divides each row by its RMS (unweighted RMSNorm).
Tensor NormalizeStreams(const ModelConfig& config, const core::TensorView& streams) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t width = config.hc_mult * config.hidden_size;
  Tensor normed = Tensor::Empty(DType::kF32, {num_tokens, width});
  kernels::RmsNorm(streams.Reshape({num_tokens, width}), core::TensorView(),
                   static_cast<float>(config.rms_norm_eps), normed.view());
  return normed;
}

}  // namespace

void MhcPreForward(const MhcWeights& weights, const ModelConfig& config,
                   const core::TensorView& streams, MhcActivations* acts) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t n = config.hc_mult;
  acts->normed = NormalizeStreams(config, streams);
  acts->mixes = Tensor::Empty(DType::kF32, {num_tokens, (2 + n) * n});
  kernels::Linear(acts->normed.view(), weights.fn.view(), acts->mixes.view());
  acts->pre = Tensor::Empty(DType::kF32, {num_tokens, n});
  acts->post = Tensor::Empty(DType::kF32, {num_tokens, n});
  acts->comb = Tensor::Empty(DType::kF32, {num_tokens, n, n});
  kernels::MhcCoefficients(acts->mixes.view(), weights.base.view(), weights.scale.view(),
                           config.hc_sinkhorn_iters, static_cast<float>(config.hc_eps),
                           acts->pre.view(), acts->post.view(), acts->comb.view());
  acts->collapsed = Tensor::Empty(DType::kF32, {num_tokens, config.hidden_size});
  kernels::MhcCollapse(streams, acts->pre.view(), acts->collapsed.view());
}

void MhcPostForward(const MhcActivations& acts, const core::TensorView& streams,
                    const core::TensorView& y, const core::TensorView& out) {
  kernels::MhcExpand(streams, y, acts.post.view(), acts.comb.view(), out);
}

void HcHeadForward(const HcHeadWeights& weights, const ModelConfig& config,
                   const core::TensorView& streams, HcHeadActivations* acts) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t n = config.hc_mult;
  acts->normed = NormalizeStreams(config, streams);
  acts->mixes = Tensor::Empty(DType::kF32, {num_tokens, n});
  kernels::Linear(acts->normed.view(), weights.fn.view(), acts->mixes.view());
  acts->pre = Tensor::Empty(DType::kF32, {num_tokens, n});
  kernels::HcHeadPre(acts->mixes.view(), weights.base.view(), weights.scale.view(),
                     static_cast<float>(config.hc_eps), acts->pre.view());
  acts->collapsed = Tensor::Empty(DType::kF32, {num_tokens, config.hidden_size});
  kernels::MhcCollapse(streams, acts->pre.view(), acts->collapsed.view());
}

}  // namespace v4rl::model
