// Input checks shared by the CPU forward (model/forward.cc) and the GPU reference forward
// (model/forward_cuda_reference.cc), so that both reject the same inputs with the same messages.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/config.h"

namespace v4rl::model {

// Checks [B, T] integer CPU ids (i32 or i64, non-empty) against the vocabulary and returns them
// as contiguous i32 [B·T]. `what` names the argument in errors.
absl::StatusOr<core::Tensor> TokenIds(const core::TensorView& ids, int64_t vocab_size,
                                      const char* what);

// Routing replay ids: empty, or one contiguous CPU i32 [B, T, k] tensor per layer, every id an
// expert.
absl::Status CheckRoutingReplay(const std::vector<core::TensorView>& replay,
                                const ModelConfig& config, int64_t batch, int64_t seq_len);

// Index replay picks: empty, or one view per layer: for CSA layers a contiguous CPU i32
// [B, T, min(index_topk, T / csa_compress_ratio)] with every pick in [-1, T / ratio), for the
// others an empty view.
absl::Status CheckIndexReplay(const std::vector<core::TensorView>& replay,
                              const ModelConfig& config, int64_t batch, int64_t seq_len);

}  // namespace v4rl::model
