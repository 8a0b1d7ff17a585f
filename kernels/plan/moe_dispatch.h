// MoE dispatch plan: which (token, slot) pairs each expert processes, grouped by expert.
//
// Built by a stable counting sort of the router's topk_idx, so within an expert the pairs keep
// token order and the plan is identical for any thread count. The CPU reference gathers rows by
// `slots`; the CUDA grouped GEMM uses the same offsets. Slot id = token * num_topk + j.
// Thread-safety: a plan is an immutable value after BuildMoeDispatchPlan.
#pragma once

#include <cstdint>
#include <vector>

namespace v4rl::kernels::plan {

struct MoeDispatchPlan {
  int64_t num_tokens = 0;
  int64_t num_topk = 0;
  int64_t num_experts = 0;
  // [num_experts + 1]: expert e owns slots[expert_offsets[e], expert_offsets[e + 1]).
  std::vector<int64_t> expert_offsets;
  // [number of valid picks]: slot ids grouped by expert, ascending within each expert.
  std::vector<int64_t> slots;

  int64_t num_tokens_for_expert(int64_t expert) const {
    return expert_offsets[expert + 1] - expert_offsets[expert];
  }
};

// topk_idx: [num_tokens, num_topk] int32, expert ids in [0, num_experts) or -1 for a dropped
// pick (skipped). CHECK-fails on ids out of range (the router produced them).
MoeDispatchPlan BuildMoeDispatchPlan(const int32_t* topk_idx, int64_t num_tokens,
                                     int64_t num_topk, int64_t num_experts);

}  // namespace v4rl::kernels::plan
