#include "model/next_token_loss.h"

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/cpu/token_losses.h"
#include "kernels/ops.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

double NextTokenCrossEntropy(const core::TensorView& input_ids, const core::Tensor& logits,
                             core::Tensor* dlogits) {
  // Targets: the next token of each position; the last position of a sequence has none.
  const int64_t batch = input_ids.shape[0], seq_len = input_ids.shape[1];
  const int64_t rows = batch * seq_len, vocab = logits.size(2);
  std::vector<int32_t> targets(rows, 0);
  std::vector<float> mask(rows, 0.0f);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t + 1 < seq_len; ++t) {
      const int64_t offset = b * input_ids.strides[0] + (t + 1) * input_ids.strides[1];
      targets[b * seq_len + t] = input_ids.dtype == DType::kI64
                                     ? static_cast<int32_t>(input_ids.data_as<int64_t>()[offset])
                                     : input_ids.data_as<int32_t>()[offset];
      mask[b * seq_len + t] = 1.0f;
    }
  }
  *dlogits = Tensor::Empty(DType::kF32, {batch, seq_len, vocab});
  return kernels::cpu::MaskedCrossEntropyRef<float>(logits.data<float>(), targets.data(),
                                                    mask.data(), rows, vocab,
                                                    dlogits->data<float>(),
                                                    kernels::OpsThreadPool());
}

absl::StatusOr<NextTokenLossResult> NextTokenLossAndGradients(const Model& model,
                                                              const core::TensorView& input_ids,
                                                              const NextTokenLossOptions& options) {
  if (input_ids.rank != 2 || input_ids.shape[1] < 2) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input_ids must be [batch, seq_len] with seq_len >= 2 for a next-token loss, got %s",
        input_ids.DebugString()));
  }
  if (options.backward.recompute && !options.index_replay.empty()) {
    return absl::InvalidArgumentError(
        "index_replay cannot be combined with backward.recompute (the recomputed blocks would "
        "select their own indexer picks)");
  }
  ForwardOptions forward_options;
  forward_options.return_routing = true;
  forward_options.return_hidden = true;
  forward_options.return_streams = true;
  forward_options.save_activations = !options.backward.recompute;
  forward_options.save_block_inputs = options.backward.recompute;
  forward_options.routing_replay = options.routing_replay;
  forward_options.index_replay = options.index_replay;
  V4RL_ASSIGN_OR_RETURN(const ForwardOutput forward, Forward(model, input_ids, forward_options));

  NextTokenLossResult result;
  Tensor dlogits;
  result.loss = NextTokenCrossEntropy(input_ids, forward.logits, &dlogits);
  result.grads = ZeroGradients(model.config);
  Backward(model, input_ids, forward, dlogits.view(), options.backward, &result.grads);
  result.routed_experts = forward.routed_experts;
  return result;
}

}  // namespace v4rl::model
