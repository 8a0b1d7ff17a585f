// Internal to kernels/cuda: the query-pair tensor-core launcher behind SparseAttentionBackward
// (attention_backward_pair_tc.cu; the key list in attention_pair.cuh), called after its argument
// checks when args.tensor_cores and SharedKeyListApplies hold.
#pragma once

#include "absl/status/status.h"
#include "kernels/cuda/attention_backward.h"

namespace v4rl::kernels::cuda {

absl::Status LaunchSparseAttentionBackwardPairTc(const SparseAttentionBackwardArgs& args);

}  // namespace v4rl::kernels::cuda
