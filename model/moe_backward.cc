#include "model/moe_backward.h"

#include <algorithm>
#include <vector>

#include "kernels/backward_ops.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

// Routing weights are renormalised with transformers' epsilon (model/moe.cc does the same).
constexpr float kRoutingDenomEps = 1e-20f;

}  // namespace

void MoeBackward(const MoeWeights& weights, const ModelConfig& config, const core::TensorView& x,
                 const MoeActivations& acts, const core::TensorView& dout,
                 const core::TensorView& dx, MoeWeights* grads) {
  const int64_t num_tokens = x.shape[0];
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.moe_intermediate_size;
  const int64_t k = config.num_experts_per_tok;
  const float limit = static_cast<float>(config.swiglu_limit);
  const float* g = dout.data_as<float>();

  // Shared expert: down projection, clamped SwiGLU, gate/up projections.
  if (config.num_shared_experts > 0) {
    const int64_t shared = weights.shared_w1.size(0);
    Tensor dact = Tensor::Zeros(DType::kF32, {num_tokens, shared});
    kernels::LinearBackward(acts.shared_act.view(), weights.shared_w2.view(), dout, dact.view(),
                            grads->shared_w2.view());
    Tensor dgate = Tensor::Zeros(DType::kF32, {num_tokens, shared});
    Tensor dup = Tensor::Zeros(DType::kF32, {num_tokens, shared});
    kernels::SwiGluClampBackward(acts.shared_gate.view(), acts.shared_up.view(), limit, dact.view(),
                                 dgate.view(), dup.view());
    kernels::LinearBackward(x, weights.shared_w1.view(), dgate.view(), dx, grads->shared_w1.view());
    kernels::LinearBackward(x, weights.shared_w3.view(), dup.view(), dx, grads->shared_w3.view());
  }

  // Routed picks in plan order (expert-major). Pick p of slot s = token·k + j computed
  // expert_out_p = w_s · (act_p · w2ᵀ); with g_p = dout[token]:
  //   u_p = g_p · w2,  dw_s = <u_p, act_p>,  dact_p = w_s · u_p,  dw2 += g_pᵀ (w_s · act_p).
  const kernels::plan::MoeDispatchPlan& plan = acts.plan;
  const int64_t num_picks = static_cast<int64_t>(plan.slots.size());
  const float* routing = acts.topk_weight.data<float>();
  Tensor picked_dout = Tensor::Empty(DType::kF32, {num_picks, hidden});
  Tensor weighted_act = Tensor::Empty(DType::kF32, {num_picks, inter});
  for (int64_t p = 0; p < num_picks; ++p) {
    const int64_t slot = plan.slots[p];
    const float* src = g + (slot / k) * hidden;
    std::copy(src, src + hidden, picked_dout.data<float>() + p * hidden);
    const float* act = acts.expert_act.data<float>() + p * inter;
    float* out = weighted_act.data<float>() + p * inter;
    for (int64_t i = 0; i < inter; ++i) out[i] = routing[slot] * act[i];
  }
  Tensor u = Tensor::Zeros(DType::kF32, {num_picks, inter});
  Tensor dgate = Tensor::Zeros(DType::kF32, {num_picks, inter});
  Tensor dup = Tensor::Zeros(DType::kF32, {num_picks, inter});
  Tensor dexpert_x = Tensor::Zeros(DType::kF32, {num_picks, hidden});
  Tensor dweights = Tensor::Zeros(DType::kF32, {num_tokens, k});
  for (int64_t e = 0; e < config.num_routed_experts; ++e) {
    const int64_t begin = plan.expert_offsets[e], end = plan.expert_offsets[e + 1];
    if (begin == end) continue;
    const core::TensorView w2 = weights.w2.view().Select(0, e);
    const core::TensorView g_e = picked_dout.view().Slice(0, begin, end);
    kernels::LinearBackward(acts.expert_act.view().Slice(0, begin, end), w2, g_e,
                            u.view().Slice(0, begin, end), core::TensorView());
    kernels::LinearBackward(weighted_act.view().Slice(0, begin, end), w2, g_e, core::TensorView(),
                            grads->w2.view().Select(0, e));
  }
  // Routing-weight gradients and the weighted activation gradients, pick by pick.
  for (int64_t p = 0; p < num_picks; ++p) {
    const int64_t slot = plan.slots[p];
    const float* act = acts.expert_act.data<float>() + p * inter;
    float* up = u.data<float>() + p * inter;
    float dot = 0.0f;
    for (int64_t i = 0; i < inter; ++i) {
      dot += up[i] * act[i];
      up[i] *= routing[slot];
    }
    dweights.data<float>()[slot] += dot;
  }
  for (int64_t e = 0; e < config.num_routed_experts; ++e) {
    const int64_t begin = plan.expert_offsets[e], end = plan.expert_offsets[e + 1];
    if (begin == end) continue;
    kernels::SwiGluClampBackward(acts.expert_gate.view().Slice(0, begin, end),
                                 acts.expert_up.view().Slice(0, begin, end), limit,
                                 u.view().Slice(0, begin, end), dgate.view().Slice(0, begin, end),
                                 dup.view().Slice(0, begin, end));
    const core::TensorView xe = acts.expert_x.view().Slice(0, begin, end);
    const core::TensorView dxe = dexpert_x.view().Slice(0, begin, end);
    kernels::LinearBackward(xe, weights.w1.view().Select(0, e), dgate.view().Slice(0, begin, end),
                            dxe, grads->w1.view().Select(0, e));
    kernels::LinearBackward(xe, weights.w3.view().Select(0, e), dup.view().Slice(0, begin, end),
                            dxe, grads->w3.view().Select(0, e));
  }
  // Scatter the gathered input gradients back to their tokens, in plan order.
  float* dx_data = dx.data_as<float>();
  for (int64_t p = 0; p < num_picks; ++p) {
    const float* src = dexpert_x.data<float>() + p * hidden;
    float* dst = dx_data + (plan.slots[p] / k) * hidden;
    for (int64_t h = 0; h < hidden; ++h) dst[h] += src[h];
  }

  // Router: renormalised weights -> scores of the picks -> sqrt(softplus) -> gate projection.
  Tensor dscores = Tensor::Zeros(DType::kF32, {num_tokens, config.num_routed_experts});
  kernels::RoutingWeightsBackward(acts.scores.view(), acts.topk_idx.view(),
                                  static_cast<float>(config.routed_scaling_factor),
                                  kRoutingDenomEps, dweights.view(), dscores.view());
  Tensor dlogits = Tensor::Zeros(DType::kF32, {num_tokens, config.num_routed_experts});
  kernels::SqrtSoftplusBackward(acts.logits.view(), dscores.view(), dlogits.view());
  kernels::LinearBackward(x, weights.gate.view(), dlogits.view(), dx, grads->gate.view());
}

}  // namespace v4rl::model
