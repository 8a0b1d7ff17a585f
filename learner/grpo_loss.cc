#include "learner/grpo_loss.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_format.h"

namespace v4rl::learner {

std::vector<double> GroupAdvantages(absl::Span<const double> rewards,
                                    absl::Span<const int64_t> groups, bool normalize_std,
                                    double std_epsilon) {
  struct Moments {
    double sum = 0, sum_sq = 0;
    int64_t count = 0;
  };
  std::map<int64_t, Moments> by_group;
  for (size_t i = 0; i < rewards.size(); ++i) {
    Moments& m = by_group[groups[i]];
    m.sum += rewards[i];
    m.sum_sq += rewards[i] * rewards[i];
    ++m.count;
  }
  std::vector<double> advantages(rewards.size(), 0.0);
  for (size_t i = 0; i < rewards.size(); ++i) {
    const Moments& m = by_group[groups[i]];
    if (m.count < 2) continue;
    const double mean = m.sum / m.count;
    double advantage = rewards[i] - mean;
    if (normalize_std) {
      // Sample standard deviation (n - 1), as torch.std in the reference implementations.
      const double variance = std::max(0.0, (m.sum_sq - m.count * mean * mean) / (m.count - 1));
      advantage /= std::sqrt(variance) + std_epsilon;
    }
    advantages[i] = advantage;
  }
  return advantages;
}

absl::StatusOr<GrpoResult> GrpoLoss(const std::vector<GrpoSequence>& sequences,
                                    const GrpoOptions& options) {
  if (options.clip_low < 0 || options.clip_low >= 1 || options.clip_high < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GRPO options: clip_low must be in [0, 1) and clip_high >= 0 (got %g, %g)",
        options.clip_low, options.clip_high));
  }
  for (size_t i = 0; i < sequences.size(); ++i) {
    const GrpoSequence& s = sequences[i];
    const size_t length = s.learner_logprobs.size();
    if (s.rollout_logprobs.size() != length ||
        (options.kl_coef != 0 && s.reference_logprobs.size() != length)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GRPO sequence %d: learner, rollout%s logprobs must have equal lengths (got %d, %d, %d)",
          i, options.kl_coef != 0 ? " and reference" : "", length, s.rollout_logprobs.size(),
          s.reference_logprobs.size()));
    }
  }
  std::vector<double> rewards;
  std::vector<int64_t> groups;
  int64_t total_tokens = 0;
  for (const GrpoSequence& s : sequences) {
    rewards.push_back(s.reward);
    groups.push_back(s.group);
    total_tokens += static_cast<int64_t>(s.learner_logprobs.size());
  }
  GrpoResult result;
  result.advantages = GroupAdvantages(rewards, groups, options.normalize_std, options.std_epsilon);
  result.masked_by_opsm.assign(sequences.size(), false);
  result.grad_learner_logprobs.resize(sequences.size());
  result.num_tokens = total_tokens;
  int64_t clipped = 0, masked = 0;
  double kl_sum = 0, ratio_sum = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const GrpoSequence& s = sequences[i];
    const int64_t length = static_cast<int64_t>(s.learner_logprobs.size());
    std::vector<float>& grad = result.grad_learner_logprobs[i];
    grad.assign(length, 0.0f);
    if (length == 0) continue;
    const double advantage = result.advantages[i];
    if (options.off_policy_masking && advantage < 0) {
      double log_ratio_sum = 0;
      for (int64_t t = 0; t < length; ++t) log_ratio_sum += s.rollout_logprobs[t] - s.learner_logprobs[t];
      if (log_ratio_sum / length > options.opsm_delta) {
        result.masked_by_opsm[i] = true;
        ++masked;
        continue;
      }
    }
    // Weight of each token in the aggregated mean.
    const double weight = options.aggregation == LossAggregation::kSequenceMean
                              ? 1.0 / (static_cast<double>(length) * sequences.size())
                              : 1.0 / total_tokens;
    for (int64_t t = 0; t < length; ++t) {
      const double log_ratio = static_cast<double>(s.learner_logprobs[t]) - s.rollout_logprobs[t];
      const double ratio = std::exp(log_ratio);
      const double clipped_ratio =
          std::clamp(ratio, 1.0 - options.clip_low, 1.0 + options.clip_high);
      const double unclipped_term = ratio * advantage, clipped_term = clipped_ratio * advantage;
      double token_loss, token_grad;
      if (clipped_term < unclipped_term) {
        token_loss = -clipped_term;  // clipped branch: constant in theta
        token_grad = 0;
        ++clipped;
      } else {
        token_loss = -unclipped_term;
        token_grad = -unclipped_term;  // d(-rho A)/d logp = -rho A
      }
      if (options.kl_coef != 0) {
        const double x = static_cast<double>(s.reference_logprobs[t]) - s.learner_logprobs[t];
        const double k3 = std::exp(x) - x - 1;
        double kl, kl_grad;
        if (options.unbiased_kl) {
          kl = ratio * k3;
          kl_grad = ratio * -x;  // d(rho k3)/d logp = rho (k3 + 1 - e^x) = -rho x
        } else {
          kl = k3;
          kl_grad = 1 - std::exp(x);
        }
        token_loss += options.kl_coef * kl;
        token_grad += options.kl_coef * kl_grad;
        kl_sum += kl;
      }
      ratio_sum += ratio;
      result.loss += weight * token_loss;
      grad[t] = static_cast<float>(weight * token_grad);
    }
  }
  const int64_t scored = std::max<int64_t>(total_tokens, 1);
  result.clip_fraction = static_cast<double>(clipped) / scored;
  result.mean_kl = kl_sum / scored;
  result.mean_ratio = ratio_sum / scored;
  result.opsm_fraction = sequences.empty() ? 0.0 : static_cast<double>(masked) / sequences.size();
  return result;
}

}  // namespace v4rl::learner
