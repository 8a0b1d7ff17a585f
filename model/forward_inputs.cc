#include "model/forward_inputs.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

absl::StatusOr<Tensor> TokenIds(const core::TensorView& ids, int64_t vocab_size, const char* what) {
  if (ids.rank != 2 || (ids.dtype != DType::kI32 && ids.dtype != DType::kI64) ||
      ids.device != core::Device::kCpu) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s must be a CPU int32/int64 [batch, seq_len] tensor, got %s", what, ids.DebugString()));
  }
  if (ids.shape[0] == 0 || ids.shape[1] == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("%s is empty (%s)", what, ids.DebugString()));
  }
  const int64_t batch = ids.shape[0], seq_len = ids.shape[1];
  Tensor out = Tensor::Empty(DType::kI32, {batch * seq_len});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const int64_t offset = b * ids.strides[0] + t * ids.strides[1];
      const int64_t id = ids.dtype == DType::kI64 ? ids.data_as<int64_t>()[offset]
                                                  : ids.data_as<int32_t>()[offset];
      if (id < 0 || id >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s[%d, %d] = %d is outside the vocabulary [0, %d)", what, b, t, id, vocab_size));
      }
      out.data<int32_t>()[b * seq_len + t] = static_cast<int32_t>(id);
    }
  }
  return out;
}

absl::Status CheckRoutingReplay(const std::vector<core::TensorView>& replay,
                                const ModelConfig& config, int64_t batch, int64_t seq_len) {
  if (replay.empty()) return absl::OkStatus();
  if (static_cast<int64_t>(replay.size()) != config.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("routing_replay has %d layers, expected num_layers = %d", replay.size(),
                        config.num_layers));
  }
  const int64_t k = config.num_experts_per_tok;
  for (size_t l = 0; l < replay.size(); ++l) {
    const core::TensorView& ids = replay[l];
    if (ids.dtype != DType::kI32 || !ids.is_contiguous() || ids.device != core::Device::kCpu ||
        !ids.SameShape({batch, seq_len, k})) {
      return absl::InvalidArgumentError(
          absl::StrFormat("routing_replay[%d] must be a contiguous CPU i32 [%d, %d, %d] tensor, "
                          "got %s",
                          l, batch, seq_len, k, ids.DebugString()));
    }
    for (int64_t i = 0; i < ids.numel(); ++i) {
      const int32_t id = ids.data_as<int32_t>()[i];
      if (id < 0 || id >= config.num_routed_experts) {
        return absl::InvalidArgumentError(
            absl::StrFormat("routing_replay[%d] entry %d is expert %d, expected [0, %d)", l, i, id,
                            config.num_routed_experts));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckIndexReplay(const std::vector<core::TensorView>& replay,
                              const ModelConfig& config, int64_t batch, int64_t seq_len) {
  if (replay.empty()) return absl::OkStatus();
  if (static_cast<int64_t>(replay.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "index_replay has %d layers, expected num_layers = %d", replay.size(), config.num_layers));
  }
  const int64_t entries = seq_len / config.csa_compress_ratio;
  const int64_t topk = std::min(config.index_topk, entries);
  for (size_t l = 0; l < replay.size(); ++l) {
    const core::TensorView& picks = replay[l];
    if (config.layer_types[l] != AttentionType::kCompressedSparse) {
      if (picks.data != nullptr) {
        return absl::InvalidArgumentError(
            absl::StrFormat("index_replay[%d] must be empty: layer %d has no indexer", l, l));
      }
      continue;
    }
    if (picks.dtype != DType::kI32 || !picks.is_contiguous() ||
        picks.device != core::Device::kCpu || !picks.SameShape({batch, seq_len, topk})) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "index_replay[%d] must be a contiguous CPU i32 [%d, %d, %d] tensor, got %s", l, batch,
          seq_len, topk, picks.DebugString()));
    }
    for (int64_t i = 0; i < picks.numel(); ++i) {
      const int32_t pick = picks.data_as<int32_t>()[i];
      if (pick < -1 || pick >= entries) {
        return absl::InvalidArgumentError(
            absl::StrFormat("index_replay[%d] entry %d is %d, expected -1 or an entry in [0, %d)",
                            l, i, pick, entries));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace v4rl::model
