// One GRPO learner step on a batch of rollout samples (reference precision, CPU): the samples are
// packed into one padded batch of prompt + completion, the policy re-scores the completion tokens
// (keep-routing: its forward replays the rollout's expert ids; keep-sampling-mask: each token's
// logprob is renormalised over the rollout's kept top-k/top-p set), a frozen reference model
// scores them for the KL term, learner/grpo_loss.h gives the loss and d loss / d logprobs, and
// that gradient is chained through the logprobs to the logits and through model::Backward to the
// parameters.
//
// The reference model is scored over the same kept set as the policy (the policy's kept_counts
// largest logits, ties towards the lower id), so that pi_theta, pi_old and pi_ref share one action
// subspace and a reference equal to the policy gives KL = 0; with keep_routing it replays the
// rollout's routing too.
//
// Ownership: the functions read the samples and models and write only the gradients/parameters
// they are given. Thread-safety: reentrant; concurrent calls need distinct gradient structs and
// must not share a policy that RlStep updates.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "learner/grpo_loss.h"
#include "learner/optimizer.h"
#include "model/forward.h"
#include "model/weights.h"

namespace v4rl::learner {

// One completion as the rollout produced it (rollout::GenerationResult plus its prompt, reward
// and provenance). n = completion.size() >= 1.
struct RolloutSample {
  std::vector<int32_t> prompt;            // [prompt_len] token ids, prompt_len >= 1
  std::vector<int32_t> completion;        // [n] token ids
  std::vector<float> rollout_logprobs;    // [n] log pi_old under the sampling distribution
  std::vector<int32_t> kept_counts;       // [n] kept-set sizes; needed with keep_sampling_mask
  // [prompt_len + n - 1, num_layers, k] i32: the experts every position fed to the model was
  // routed to (rollout::GenerationResult::routed_experts); needed with keep_routing.
  std::vector<int32_t> routed_experts;
  double reward = 0;
  int64_t group = 0;            // samples of one prompt share a group (GRPO's baseline)
  int64_t weight_version = -1;  // policy version that generated it; -1 = unknown
};

struct RlStepOptions {
  GrpoOptions grpo;  // grpo.kl_coef > 0 needs a reference model
  // Replay the rollout's expert ids in the policy's (and reference's) forward. Default: true.
  bool keep_routing = true;
  // Renormalise logprobs over the rollout's kept set. Default: true.
  bool keep_sampling_mask = true;
  // The policy's current weight version, for per-sample lag; -1 = unknown. Default: -1.
  int64_t current_version = -1;
  // Largest accepted lag current_version - weight_version; -1 = unbounded. Default: -1.
  int64_t max_lag = -1;
  // Backward recomputes block activations instead of keeping them (model/backward.h).
  bool recompute = false;
};

struct RlStepMetrics {
  double loss = 0;
  double mean_ratio = 0;     // over scored tokens, pi_theta / pi_old
  double clip_fraction = 0;  // tokens on the clipped branch
  double mean_kl = 0;        // V3.2's KL estimate per token (0 without a reference)
  double opsm_fraction = 0;  // samples dropped by off-policy sequence masking
  double mean_reward = 0;
  int64_t num_tokens = 0;
  // Tokens no longer among the policy's kept_counts largest logits, scored over the full
  // vocabulary instead (see ScoreCompletions).
  int64_t kept_set_fallbacks = 0;
  // Per sample, current_version - weight_version; -1 where either is unknown.
  std::vector<int64_t> lags;
  int64_t max_lag = -1;  // -1 when no lag is known
};

struct RlStepResult {
  RlStepMetrics metrics;
  std::vector<std::vector<float>> learner_logprobs;  // per sample [n], log pi_theta
  std::vector<double> advantages;                    // per sample
  double grad_norm = 0;                              // before clipping (RlStep only)
};

// Per sample [n] logprobs of the completion tokens under `model`, with the rollout's routing
// replayed (keep_routing) and over its kept sets (keep_sampling_mask). The kept set is rebuilt from
// its size as the model's kept_counts largest logits (ties towards the lower id), which is the
// sampler's set while the model is the one that sampled; a token that has left it (the model
// drifted) is scored over the full vocabulary rather than getting -inf.
// Errors as RlLossAndGradients.
absl::StatusOr<std::vector<std::vector<float>>> ScoreCompletions(
    const model::Model& model, absl::Span<const RolloutSample> samples, bool keep_routing,
    bool keep_sampling_mask);

// GRPO loss of `samples` under `policy`; ADDS d loss / d parameters to `grads` (from
// model::ZeroGradients(policy.config)). `reference` may be null when options.grpo.kl_coef == 0.
// Errors (InvalidArgument, naming the sample and field): no samples; an empty prompt or
// completion; a token id outside [0, vocab_size); rollout_logprobs (or kept_counts, with
// keep_sampling_mask) not of length n; a negative kept count; routed_experts (with keep_routing)
// not of size (prompt_len + n - 1) * num_layers * k; a missing reference while kl_coef > 0 or one
// with another vocabulary or layer count; a weight_version above current_version; and those of
// model::Forward and GrpoLoss. FailedPrecondition when a sample's lag exceeds options.max_lag.
absl::StatusOr<RlStepResult> RlLossAndGradients(const model::Model& policy,
                                                const model::Model* reference,
                                                absl::Span<const RolloutSample> samples,
                                                const RlStepOptions& options,
                                                model::ModelWeights* grads);

// A whole learner step: zeroes the gradients of `parameters` (views of `policy` and of `grads`,
// see learner/trainable_parameters.h), RlLossAndGradients, clips the global gradient norm to
// grad_clip (<= 0: no clipping), and applies optimizer.Step(lr). Errors as RlLossAndGradients;
// on an error the parameters and the optimizer state are left as they were.
absl::StatusOr<RlStepResult> RlStep(const model::Model& policy, const model::Model* reference,
                                    absl::Span<const RolloutSample> samples,
                                    const RlStepOptions& options,
                                    const std::vector<TrainableParameter>& parameters,
                                    model::ModelWeights* grads, Optimizer& optimizer, float lr,
                                    double grad_clip);

}  // namespace v4rl::learner
