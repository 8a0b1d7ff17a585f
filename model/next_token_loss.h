// The language-model loss of a batch and its gradients: mean next-token cross entropy over
// input_ids exactly as transformers computes it with labels = input_ids (logits[:, t] predicts
// ids[:, t + 1], averaged over all B·(T - 1) positions), then Backward to every trainable
// parameter. This is what `v4rl grad` reports and what supervised fine-tuning minimises.
// Thread-safety: reentrant; runs on kernels::OpsThreadPool().
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/backward.h"
#include "model/forward.h"

namespace v4rl::model {

struct NextTokenLossOptions {
  BackwardOptions backward;
  // Routing replay: per layer [B, T, k] i32 expert ids (see ForwardOptions::routing_replay).
  std::vector<core::TensorView> routing_replay;
  // Index replay (ForwardOptions::index_replay); not with backward.recompute (InvalidArgument:
  // the recomputed blocks would select again).
  std::vector<core::TensorView> index_replay;
};

struct NextTokenLossResult {
  double loss = 0;
  ModelWeights grads;                        // ZeroGradients layout, d loss / d parameter
  std::vector<core::Tensor> routed_experts;  // per layer [B, T, k] i32: the ids used
};

// The loss half of the above, for callers with their own forward/backward (the CUDA backward):
// the mean next-token cross entropy of logits [B, T, V] f32 for input_ids [B, T] i32/i64 (T >= 2,
// not checked here), and d loss / d logits [B, T, V] f32 into *dlogits.
double NextTokenCrossEntropy(const core::TensorView& input_ids, const core::Tensor& logits,
                             core::Tensor* dlogits);

// input_ids: [B, T] i32 or i64 with T >= 2. Errors: InvalidArgument for T < 2, and Forward's.
absl::StatusOr<NextTokenLossResult> NextTokenLossAndGradients(
    const Model& model, const core::TensorView& input_ids,
    const NextTokenLossOptions& options = {});

}  // namespace v4rl::model
