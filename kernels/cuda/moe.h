// MoE routing and token permutation on the GPU (spec §4):
//  - RouteTopK: sqrt(softplus) scores from the gate logits, selection by the top-k of
//    score + bias (plan/topk.h order), by the token's tid2eid row (hash layers) or by replayed
//    ids, and weights = picked scores / (their sum + 1e-20) · route_scale, as model/moe.cc.
//  - UploadMoePlan: the dispatch plan (built on the host by plan::BuildMoeDispatchPlan from the
//    routed ids, so the expert order is the CPU's) as device slot lists.
//  - BuildMoePlanOnDevice: the same plan built on the device from the device topk_idx
//    (identical offsets and slot order; no host sync), for GroupedGemmDeviceOffsets.
//  - MoeGather: rows of x in plan order, the input of the per-expert GEMMs (GroupedGemm).
//  - MoeCombine: out[t] = Σ_j w[t, j] · expert_out[pick(t, j)] (+ shared[t]), picks in slot
//    order, each pick's row scaled by its weight before the sum (as the CPU).
//  - MoeScalePicks: the routing weights applied to the experts' activations instead (before
//    the down projection, the official order the FP8 simulation needs), then MoeCombine
//    unweighted.
// fp32 arithmetic; activations bf16 or f32. Thread-safety: reentrant; the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/plan/moe_dispatch.h"

namespace v4rl::kernels::cuda {

// Experts per token and experts per layer the routing kernel handles.
inline constexpr int64_t kMaxRoutedTopK = 16;
inline constexpr int64_t kMaxRoutedExperts = 1024;

struct RouteArgs {
  core::TensorView logits;       // [N, E] f32 (x · gateᵀ)
  core::TensorView bias;         // [E] f32, selection bias (top-k mode)
  core::TensorView tid2eid;      // [V, k] i32 (hash mode)
  core::TensorView token_ids;    // [N] i32 (hash mode); ids outside [0, V) give -1 picks
  core::TensorView replay_idx;   // optional [N, k] i32: replaces the selection (keep-routing)
  core::TensorView scores;       // optional [N, E] f32 out: sqrt(softplus(logits))
  core::TensorView topk_idx;     // [N, k] i32 out
  core::TensorView topk_weight;  // [N, k] f32 out
  bool hash = false;
  float route_scale = 1.0f;
};
absl::Status RouteTopK(const RouteArgs& args);

// Copies the plan's slot lists to the device. slots: [num_tokens · k] i32 (first P entries:
// slot ids in plan order); pick_of_slot: [num_tokens · k] i32 (plan position of each slot, -1
// for dropped picks). Synchronous (host to device copies).
absl::Status UploadMoePlan(const plan::MoeDispatchPlan& plan, const core::TensorView& slots,
                           const core::TensorView& pick_of_slot);

// plan::BuildMoeDispatchPlan on the device: offsets [E + 1] i32 (expert e owns plan positions
// [offsets[e], offsets[e + 1])); slots [N · k] i32 (first P = offsets[E] entries: slot ids in
// plan order, then -1); pick_of_slot [N · k] i32 (as UploadMoePlan). topk_idx: [N, k] i32
// device; ids outside [0, E) are dropped picks. One single-block launch, queued.
absl::Status BuildMoePlanOnDevice(const core::TensorView& topk_idx, int64_t num_experts,
                                  const core::TensorView& offsets, const core::TensorView& slots,
                                  const core::TensorView& pick_of_slot);

// out[p] = x[slots[p] / k] for p < P; rows whose slot is -1 are zeros. x: [N, H] bf16|f32 contiguous; slots: [>= P] i32 device;
// out: [P, H] bf16|f32 contiguous.
absl::Status MoeGather(const core::TensorView& x, const core::TensorView& slots, int64_t k,
                       const core::TensorView& out);

// out[t, h] = Σ_j w[t, j] · expert_out[pick_of_slot[t·k + j], h] (+ shared[t, h]).
// expert_out: [P, H] bf16|f32; pick_of_slot: [N · k] i32; topk_weight: [N, k] f32;
// shared: optional [N, H] bf16|f32; out: [N, H] bf16|f32. All contiguous device views.
// weighted false: w = 1 (the weights were applied by MoeScalePicks).
absl::Status MoeCombine(const core::TensorView& expert_out, const core::TensorView& pick_of_slot,
                        const core::TensorView& topk_weight, const core::TensorView& shared,
                        const core::TensorView& out, bool weighted = true);

// act[pick_of_slot[s]] *= topk_weight[s] for every slot s with a pick (in place; bf16 rows round
// once). act: [>= P, I] bf16|f32 contiguous (rows in plan order); pick_of_slot: [N · k] i32;
// topk_weight: [N, k] f32.
absl::Status MoeScalePicks(const core::TensorView& act, const core::TensorView& pick_of_slot,
                           const core::TensorView& topk_weight);

}  // namespace v4rl::kernels::cuda
