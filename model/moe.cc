#include "model/moe.h"

#include <vector>

#include "kernels/ops.h"
#include "kernels/plan/topk.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

void RouteTokens(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                 const core::TensorView& x, const core::TensorView& token_ids,
                 MoeActivations* acts) {
  RouteTokens(weights, type, config, x, token_ids, core::TensorView(), acts);
}

void RouteTokens(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                 const core::TensorView& x, const core::TensorView& token_ids,
                 const core::TensorView& replay_topk_idx, MoeActivations* acts) {
  const int64_t num_tokens = x.shape[0];
  const int64_t num_experts = config.num_routed_experts;
  const int64_t k = config.num_experts_per_tok;
  acts->logits = Tensor::Empty(DType::kF32, {num_tokens, num_experts});
  kernels::Linear(x, weights.gate.view(), acts->logits.view());
  acts->scores = Tensor::Empty(DType::kF32, {num_tokens, num_experts});
  kernels::SqrtSoftplus(acts->logits.view(), acts->scores.view());

  acts->topk_idx = Tensor::Empty(DType::kI32, {num_tokens, k});
  acts->topk_weight = Tensor::Empty(DType::kF32, {num_tokens, k});
  const float* scores = acts->scores.data<float>();
  int32_t* idx = acts->topk_idx.data<int32_t>();
  float* weight = acts->topk_weight.data<float>();
  std::vector<float> biased(num_experts);
  std::vector<float> picked(k);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* s = scores + t * num_experts;
    // Selection: replayed ids, the token's fixed experts, or the top-k of score + bias (bias
    // selects only).
    if (replay_topk_idx.data != nullptr) {
      const int32_t* row = replay_topk_idx.data_as<int32_t>() + t * k;
      std::copy(row, row + k, idx + t * k);
    } else if (type == MlpType::kHashMoe) {
      const int32_t id = token_ids.data_as<int32_t>()[t];
      const int32_t* row = weights.tid2eid.data<int32_t>() + static_cast<int64_t>(id) * k;
      std::copy(row, row + k, idx + t * k);
    } else {
      const float* bias = weights.bias.data<float>();
      for (int64_t e = 0; e < num_experts; ++e) biased[e] = s[e] + bias[e];
      kernels::plan::TopK(biased.data(), static_cast<int32_t>(num_experts),
                          static_cast<int32_t>(k), idx + t * k, picked.data());
    }
    // Weights: unbiased scores of the picks, renormalised (+1e-20 as transformers), scaled.
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += s[idx[t * k + j]];
    for (int64_t j = 0; j < k; ++j) {
      weight[t * k + j] = s[idx[t * k + j]] / (sum + 1e-20f) *
                          static_cast<float>(config.routed_scaling_factor);
    }
  }
}

void MoeForward(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                const core::TensorView& x, const core::TensorView& token_ids,
                MoeActivations* acts, const core::TensorView& out) {
  MoeForward(weights, type, config, x, token_ids, core::TensorView(), acts, out);
}

void MoeForward(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                const core::TensorView& x, const core::TensorView& token_ids,
                const core::TensorView& replay_topk_idx, MoeActivations* acts,
                const core::TensorView& out) {
  const int64_t num_tokens = x.shape[0];
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.moe_intermediate_size;
  const int64_t k = config.num_experts_per_tok;
  const float limit = static_cast<float>(config.swiglu_limit);
  RouteTokens(weights, type, config, x, token_ids, replay_topk_idx, acts);

  // Group the picks by expert and gather their inputs.
  acts->plan = kernels::plan::BuildMoeDispatchPlan(acts->topk_idx.data<int32_t>(), num_tokens, k,
                                                   config.num_routed_experts);
  const int64_t num_picks = static_cast<int64_t>(acts->plan.slots.size());
  acts->expert_x = Tensor::Empty(DType::kF32, {num_picks, hidden});
  for (int64_t p = 0; p < num_picks; ++p) {
    const float* src = x.data_as<float>() + (acts->plan.slots[p] / k) * hidden;
    std::copy(src, src + hidden, acts->expert_x.data<float>() + p * hidden);
  }

  // Each expert on its contiguous block of picks: gate/up, clamped SwiGLU, down, weight.
  acts->expert_gate = Tensor::Empty(DType::kF32, {num_picks, inter});
  acts->expert_up = Tensor::Empty(DType::kF32, {num_picks, inter});
  acts->expert_act = Tensor::Empty(DType::kF32, {num_picks, inter});
  acts->expert_out = Tensor::Empty(DType::kF32, {num_picks, hidden});
  for (int64_t e = 0; e < config.num_routed_experts; ++e) {
    const int64_t begin = acts->plan.expert_offsets[e], end = acts->plan.expert_offsets[e + 1];
    if (begin == end) continue;
    const core::TensorView xe = acts->expert_x.view().Slice(0, begin, end);
    kernels::Linear(xe, weights.w1.view().Select(0, e),
                    acts->expert_gate.view().Slice(0, begin, end));
    kernels::Linear(xe, weights.w3.view().Select(0, e),
                    acts->expert_up.view().Slice(0, begin, end));
    kernels::SwiGluClamp(acts->expert_gate.view().Slice(0, begin, end),
                         acts->expert_up.view().Slice(0, begin, end), limit,
                         acts->expert_act.view().Slice(0, begin, end));
    kernels::Linear(acts->expert_act.view().Slice(0, begin, end), weights.w2.view().Select(0, e),
                    acts->expert_out.view().Slice(0, begin, end));
  }
  const float* routing = acts->topk_weight.data<float>();
  std::vector<int64_t> pick_of_slot(num_tokens * k, -1);
  for (int64_t p = 0; p < num_picks; ++p) {
    const int64_t slot = acts->plan.slots[p];
    pick_of_slot[slot] = p;
    float* row = acts->expert_out.data<float>() + p * hidden;
    for (int64_t h = 0; h < hidden; ++h) row[h] *= routing[slot];
  }

  // Shared expert on every token.
  float* y = out.data_as<float>();
  if (config.num_shared_experts > 0) {
    const int64_t shared = weights.shared_w1.size(0);
    acts->shared_gate = Tensor::Empty(DType::kF32, {num_tokens, shared});
    acts->shared_up = Tensor::Empty(DType::kF32, {num_tokens, shared});
    acts->shared_act = Tensor::Empty(DType::kF32, {num_tokens, shared});
    acts->shared_out = Tensor::Empty(DType::kF32, {num_tokens, hidden});
    kernels::Linear(x, weights.shared_w1.view(), acts->shared_gate.view());
    kernels::Linear(x, weights.shared_w3.view(), acts->shared_up.view());
    kernels::SwiGluClamp(acts->shared_gate.view(), acts->shared_up.view(), limit,
                         acts->shared_act.view());
    kernels::Linear(acts->shared_act.view(), weights.shared_w2.view(), acts->shared_out.view());
  }

  // out = Σ_j routed pick j (slot order) + shared.
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t h = 0; h < hidden; ++h) {
      float routed = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t p = pick_of_slot[t * k + j];
        if (p >= 0) routed += acts->expert_out.data<float>()[p * hidden + h];
      }
      y[t * hidden + h] =
          config.num_shared_experts > 0 ? routed + acts->shared_out.data<float>()[t * hidden + h]
                                        : routed;
    }
  }
}

}  // namespace v4rl::model
