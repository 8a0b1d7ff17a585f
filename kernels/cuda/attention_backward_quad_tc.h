// Internal to kernels/cuda: the four-query tensor-core launcher behind SparseAttentionBackward
// (attention_backward_quad_tc.cu), called after its argument checks when args.tensor_cores holds,
// head_dim is kQuadHeadDim (512), out is 16-byte aligned and SharedKeyListApplies
// (attention_quad_tc.h) holds.
#pragma once

#include "absl/status/status.h"
#include "kernels/cuda/attention_backward.h"

namespace v4rl::kernels::cuda {

absl::Status LaunchSparseAttentionBackwardQuadTc(const SparseAttentionBackwardArgs& args);

}  // namespace v4rl::kernels::cuda
