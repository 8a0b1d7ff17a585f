// Internal to kernels/cuda: the tensor-core launcher behind SparseAttentionBackward (with
// args.tensor_cores), called after its argument checks (attention_backward.cu).
#pragma once

#include "absl/status/status.h"
#include "kernels/cuda/attention_backward.h"

namespace v4rl::kernels::cuda {

absl::Status LaunchSparseAttentionBackwardTc(const SparseAttentionBackwardArgs& args);

}  // namespace v4rl::kernels::cuda
