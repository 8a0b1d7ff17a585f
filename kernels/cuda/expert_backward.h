// Backward of the MoE dispatch and combine of kernels/cuda/moe.h (MoeGather, MoeCombine); the
// expert GEMMs' backward is GroupedLinearBackward (kernels/cuda/linear_backward.h) and the
// activation's SwiGluClampBackward. Each plan row belongs to exactly one (token, pick), so both
// kernels run one block per token and write disjoint rows: deterministic, no atomics.
// Gradients are ADDED to (the caller zeroes them). Thread-safety: reentrant; the launch stream
// (stream.h).
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// Backward of out[t] = Σ_j w[t, j]·expert_out[pick_of_slot[t·k + j]] (+ shared[t]; the shared
// branch's gradient is dout itself). expert_out: [P, H] bf16|f32; pick_of_slot: [N·k] i32 (-1:
// dropped pick); topk_weight: [N, k] f32; dout: [N, H] bf16|f32.
// dexpert_out: [P, H] f32 += w·dout; dweight: [N, k] f32 += <dout[t], expert_out[p]> (or empty).
absl::Status MoeCombineBackward(const core::TensorView& expert_out,
                                const core::TensorView& pick_of_slot,
                                const core::TensorView& topk_weight, const core::TensorView& dout,
                                const core::TensorView& dexpert_out,
                                const core::TensorView& dweight);

// Backward of the gather out[p] = x[slots[p] / k]: dx[t] += Σ_j dgathered[pick_of_slot[t·k + j]].
// dgathered: [P, H] bf16|f32; pick_of_slot: [N·k] i32; dx: [N, H] f32.
absl::Status MoeGatherBackward(const core::TensorView& dgathered,
                               const core::TensorView& pick_of_slot, int64_t k,
                               const core::TensorView& dx);

}  // namespace v4rl::kernels::cuda
