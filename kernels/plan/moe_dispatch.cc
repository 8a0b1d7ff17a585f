#include "kernels/plan/moe_dispatch.h"

#include "core/logging.h"

namespace v4rl::kernels::plan {

MoeDispatchPlan BuildMoeDispatchPlan(const int32_t* topk_idx, int64_t num_tokens,
                                     int64_t num_topk, int64_t num_experts) {
  MoeDispatchPlan plan;
  plan.num_tokens = num_tokens;
  plan.num_topk = num_topk;
  plan.num_experts = num_experts;
  plan.expert_offsets.assign(num_experts + 1, 0);
  const int64_t num_slots = num_tokens * num_topk;
  // Count the picks of each expert.
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t expert = topk_idx[slot];
    if (expert < 0) continue;
    V4RL_CHECK_LT(expert, num_experts) << "routed expert id out of range at slot " << slot;
    ++plan.expert_offsets[expert + 1];
  }
  // Prefix sums turn counts into each expert's first position.
  for (int64_t e = 0; e < num_experts; ++e) plan.expert_offsets[e + 1] += plan.expert_offsets[e];
  // Stable placement: slots visited in ascending order keep token order within an expert.
  plan.slots.resize(plan.expert_offsets[num_experts]);
  std::vector<int64_t> cursor(plan.expert_offsets.begin(), plan.expert_offsets.end() - 1);
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t expert = topk_idx[slot];
    if (expert < 0) continue;
    plan.slots[cursor[expert]++] = slot;
  }
  return plan;
}

}  // namespace v4rl::kernels::plan
