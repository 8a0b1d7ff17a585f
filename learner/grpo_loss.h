// GRPO policy loss with DeepSeek-V3.2's corrections, on per-token logprobs.
//
// For completion i of a prompt's group with reward r_i:
//   advantage  A_i = r_i - mean_group(r)          (divided by std_group(r) + eps if normalize_std)
//   ratio      rho_t = exp(logp_theta_t - logp_rollout_t)
//   surrogate  -min(rho_t A_i, clip(rho_t, 1 - clip_low, 1 + clip_high) A_i)
//   KL term    kl_coef * KL_t, with the k3 estimate k3_t = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1
//              and, when unbiased_kl, V3.2's importance reweighting KL_t = rho_t * k3_t (its
//              gradient, rho_t (logp_theta_t - logp_ref_t), is unbiased under rollout samples)
//   off-policy sequence masking (OPSM): a completion with A_i < 0 whose mean over tokens of
//              logp_rollout - logp_theta exceeds opsm_delta contributes nothing.
// Aggregation: kSequenceMean averages tokens within each completion then over completions
// (DeepSeekMath); kTokenMean averages over all tokens of the batch.
//
// The loss is differentiated with respect to the learner's logprobs only; chain it to logits
// with kernels::cpu::TokenLogprobsBackwardRef. Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace v4rl::learner {

enum class LossAggregation { kSequenceMean, kTokenMean };

struct GrpoOptions {
  bool normalize_std = false;  // V3.2 drops the std division (question-difficulty bias)
  double std_epsilon = 1e-6;
  double clip_low = 0.2;
  double clip_high = 0.2;
  double kl_coef = 0.0;        // domain-dependent; 0 disables the reference model
  bool unbiased_kl = true;
  bool off_policy_masking = true;
  double opsm_delta = 1e-4;
  LossAggregation aggregation = LossAggregation::kSequenceMean;
};

// One completion's tokens (all spans of equal length = the completion's scored tokens).
struct GrpoSequence {
  int64_t group = 0;
  double reward = 0;
  absl::Span<const float> learner_logprobs;    // log pi_theta, [T]
  absl::Span<const float> rollout_logprobs;    // log pi_old (the sampler's), [T]
  absl::Span<const float> reference_logprobs;  // log pi_ref, [T]; may be empty when kl_coef == 0
};

struct GrpoResult {
  double loss = 0;
  std::vector<std::vector<float>> grad_learner_logprobs;  // per sequence, [T]
  std::vector<double> advantages;                         // per sequence
  std::vector<bool> masked_by_opsm;                       // per sequence
  // Metrics over scored tokens.
  double clip_fraction = 0;   // tokens whose clipped branch was taken
  double mean_kl = 0;         // mean KL_t estimate
  double mean_ratio = 0;
  double opsm_fraction = 0;   // sequences masked
  int64_t num_tokens = 0;
};

// Group-normalised advantages for rewards with group ids (groups of one get advantage 0).
std::vector<double> GroupAdvantages(absl::Span<const double> rewards,
                                    absl::Span<const int64_t> groups, bool normalize_std,
                                    double std_epsilon);

// InvalidArgument naming the sequence when spans differ in length, the reference is missing
// while kl_coef > 0, or an option is out of range.
absl::StatusOr<GrpoResult> GrpoLoss(const std::vector<GrpoSequence>& sequences,
                                    const GrpoOptions& options);

}  // namespace v4rl::learner
