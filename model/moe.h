// The V4 mixture of experts (spec §4): sqrt(softplus) router scores, selection by top-k of
// (score + bias) or by the fixed tid2eid table (hash layers), weights renormalised over the
// picks and scaled by routed_scaling_factor, clamped-SwiGLU routed experts, one shared expert.
//
// Routed work is grouped by expert with plan/moe_dispatch.h; per-pick buffers are in plan order
// (expert-major, token order within an expert), which is also what a backward pass walks.
// The routing weight multiplies each expert's down projection, as transformers does.
// Thread-safety: reentrant; activations are owned by the caller.
#pragma once

#include "core/tensor.h"
#include "kernels/plan/moe_dispatch.h"
#include "model/config.h"
#include "model/weights.h"

namespace v4rl::model {

struct MoeActivations {
  core::Tensor logits;       // [N, E] x · gateᵀ
  core::Tensor scores;       // [N, E] sqrt(softplus(logits))
  core::Tensor topk_idx;     // [N, k] i32 chosen experts (rank order; hash: tid2eid order)
  core::Tensor topk_weight;  // [N, k] scores of the picks / their sum · routed_scaling_factor
  kernels::plan::MoeDispatchPlan plan;
  core::Tensor expert_x;     // [num_picks, H] gathered inputs, plan order
  core::Tensor expert_gate;  // [num_picks, I] expert_x · w1[e]ᵀ
  core::Tensor expert_up;    // [num_picks, I] expert_x · w3[e]ᵀ
  core::Tensor expert_act;   // [num_picks, I] clamped SwiGLU
  core::Tensor expert_out;   // [num_picks, H] expert_act · w2[e]ᵀ · routing weight (CPU only)
  core::Tensor shared_gate;  // [N, S]
  core::Tensor shared_up;    // [N, S]
  core::Tensor shared_act;   // [N, S]
  core::Tensor shared_out;   // [N, H]
  // The CUDA training forward's plan, built on the device instead of `plan` (which it leaves
  // empty) and read by the CUDA backward; empty where the forward ran on the CPU: slots [N·k] i32
  // (the picks' slots in plan order, then -1), pick_of_slot [N·k] i32 (-1: dropped),
  // expert_offsets [E + 1] i32. The CUDA forward's expert rows are N·k, rows past the real picks
  // zeros in and ignored out.
  core::Tensor device_slots, device_pick_of_slot, device_offsets;
};

// x: [N, H] f32 (ffn_norm output); token_ids: [N] i32 (hash routing); out: [N, H] f32.
void MoeForward(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                const core::TensorView& x, const core::TensorView& token_ids,
                MoeActivations* acts, const core::TensorView& out);
// Routing replay (keep-routing): replay_topk_idx [N, k] i32, ids in [0, E), replaces the
// selection (top-k or tid2eid); the weights still come from the current scores. An empty view
// (data == nullptr) selects as MoeForward does.
void MoeForward(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                const core::TensorView& x, const core::TensorView& token_ids,
                const core::TensorView& replay_topk_idx, MoeActivations* acts,
                const core::TensorView& out);

// Router alone (selection and weights), for tests and routing replay.
// x: [N, H]; token_ids: [N] i32. Fills logits, scores, topk_idx, topk_weight.
void RouteTokens(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                 const core::TensorView& x, const core::TensorView& token_ids,
                 MoeActivations* acts);
// With routing replay, as the MoeForward overload above.
void RouteTokens(const MoeWeights& weights, MlpType type, const ModelConfig& config,
                 const core::TensorView& x, const core::TensorView& token_ids,
                 const core::TensorView& replay_topk_idx, MoeActivations* acts);

}  // namespace v4rl::model
