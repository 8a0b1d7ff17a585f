#include "learner/rl_step.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/cpu/token_losses.h"
#include "learner/trainable_parameters.h"
#include "model/backward.h"

namespace v4rl::learner {
namespace {

// The samples packed into rows of one batch. Row b feeds prompt + completion[0 .. n-2] (the
// positions whose next token is scored), padded to `width` by repeating its last token and that
// position's routing (padding sits after every scored position, so causal attention keeps it from
// changing them).
struct PackedBatch {
  int64_t batch = 0;
  int64_t width = 0;
  core::Tensor input_ids;                    // [B, W] i32
  std::vector<int32_t> targets;              // [B·W] completion token scored at a row, or -1
  std::vector<int32_t> kept_counts;          // [B·W] kept-set size, 0 = full vocabulary
  std::vector<core::Tensor> routing;         // per layer [B, W, k] i32 (keep_routing)
  std::vector<int64_t> first_scored;         // per sample, row offset b·W + prompt_len - 1
};

absl::Status ValidateSamples(const model::ModelConfig& config,
                             absl::Span<const RolloutSample> samples, bool keep_routing,
                             bool keep_sampling_mask) {
  if (samples.empty()) return absl::InvalidArgumentError("rl step: samples is empty");
  const int64_t per_position = config.num_layers * config.num_experts_per_tok;
  for (size_t i = 0; i < samples.size(); ++i) {
    const RolloutSample& s = samples[i];
    const int64_t n = s.completion.size();
    if (s.prompt.empty() || n == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "rl step: sample %d has prompt length %d and completion length %d, both must be >= 1",
          i, s.prompt.size(), n));
    }
    for (int64_t j = 0; j < n; ++j) {
      if (s.completion[j] < 0 || s.completion[j] >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "rl step: sample %d completion[%d] = %d is outside [0, %d)", i, j, s.completion[j],
            config.vocab_size));
      }
    }
    if (static_cast<int64_t>(s.rollout_logprobs.size()) != n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "rl step: sample %d has %d rollout_logprobs, expected the completion length %d", i,
          s.rollout_logprobs.size(), n));
    }
    if (keep_sampling_mask) {
      if (static_cast<int64_t>(s.kept_counts.size()) != n) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "rl step: sample %d has %d kept_counts, expected the completion length %d "
            "(keep_sampling_mask)", i, s.kept_counts.size(), n));
      }
      for (int64_t j = 0; j < n; ++j) {
        if (s.kept_counts[j] < 0) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "rl step: sample %d kept_counts[%d] = %d, expected >= 0", i, j, s.kept_counts[j]));
        }
      }
    }
    const int64_t positions = s.prompt.size() + n - 1;
    if (keep_routing &&
        static_cast<int64_t>(s.routed_experts.size()) != positions * per_position) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "rl step: sample %d has %d routed_experts, expected (prompt_len + n - 1) * num_layers * "
          "k = %d * %d * %d (keep_routing)", i, s.routed_experts.size(), positions,
          config.num_layers, config.num_experts_per_tok));
    }
  }
  return absl::OkStatus();
}

// Lags are known where both versions are (>= 0).
absl::Status CheckLags(absl::Span<const RolloutSample> samples, const RlStepOptions& options) {
  if (options.current_version < 0) return absl::OkStatus();
  for (size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].weight_version < 0) continue;
    const int64_t lag = options.current_version - samples[i].weight_version;
    if (lag < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "rl step: sample %d has weight_version %d, newer than the policy's current_version %d",
          i, samples[i].weight_version, options.current_version));
    }
    if (options.max_lag >= 0 && lag > options.max_lag) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "rl step: sample %d from weight_version %d lags the policy's version %d by %d, more "
          "than max_lag %d", i, samples[i].weight_version, options.current_version, lag,
          options.max_lag));
    }
  }
  return absl::OkStatus();
}

PackedBatch Pack(const model::ModelConfig& config, absl::Span<const RolloutSample> samples,
                 bool keep_routing, bool keep_sampling_mask) {
  PackedBatch p;
  p.batch = samples.size();
  for (const RolloutSample& s : samples) {
    p.width = std::max<int64_t>(p.width, s.prompt.size() + s.completion.size() - 1);
  }
  const int64_t B = p.batch, W = p.width, L = config.num_layers, k = config.num_experts_per_tok;
  p.input_ids = core::Tensor::Empty(core::DType::kI32, {B, W});
  p.targets.assign(B * W, -1);
  p.kept_counts.assign(B * W, 0);
  if (keep_routing) {
    for (int64_t l = 0; l < L; ++l) {
      p.routing.push_back(core::Tensor::Empty(core::DType::kI32, {B, W, k}));
    }
  }
  int32_t* ids = p.input_ids.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    const RolloutSample& s = samples[b];
    const int64_t prompt_len = s.prompt.size(), n = s.completion.size();
    const int64_t length = prompt_len + n - 1;
    // Inputs: the prompt, the completion but its last token, then padding.
    for (int64_t t = 0; t < W; ++t) {
      const int64_t source = std::min(t, length - 1);
      ids[b * W + t] = source < prompt_len ? s.prompt[source] : s.completion[source - prompt_len];
    }
    // Position prompt_len - 1 + j predicts completion token j.
    p.first_scored.push_back(b * W + prompt_len - 1);
    for (int64_t j = 0; j < n; ++j) {
      p.targets[b * W + prompt_len - 1 + j] = s.completion[j];
      if (keep_sampling_mask) p.kept_counts[b * W + prompt_len - 1 + j] = s.kept_counts[j];
    }
    // Routing: the rollout's [length, L, k] rows transposed to per-layer [B, W, k].
    for (int64_t l = 0; l < L && keep_routing; ++l) {
      int32_t* out = p.routing[l].data<int32_t>() + b * W * k;
      for (int64_t t = 0; t < W; ++t) {
        const int64_t source = std::min(t, length - 1);
        std::copy_n(s.routed_experts.data() + (source * L + l) * k, k, out + t * k);
      }
    }
  }
  return p;
}

model::ForwardOptions ReplayOptions(const PackedBatch& p) {
  model::ForwardOptions options;
  for (const core::Tensor& layer : p.routing) options.routing_replay.push_back(layer.view());
  return options;
}

// Per-row logprobs [B·W] of the targets over `logits` [B·W, V]: over the kept sets of
// kept_counts [B·W] i32 where > 0, over the full vocabulary where 0 or with nullptr.
std::vector<float> RowLogprobs(const core::Tensor& logits, const PackedBatch& p,
                               const int32_t* kept_counts, int64_t vocab) {
  std::vector<float> logprobs(p.batch * p.width);
  kernels::cpu::TokenLogprobsRef<float>(logits.data<float>(), p.targets.data(), kept_counts,
                                        p.batch * p.width, vocab, logprobs.data(), nullptr,
                                        &core::ThreadPool::Default());
  return logprobs;
}

// RowLogprobs, except that a row whose target fell out of the policy's kept set (the policy
// drifted since sampling: its kept_counts largest logits no longer hold the sampled token, which
// the sampler's own set did) is scored over the full vocabulary instead of getting -inf; such
// rows get kept_counts 0 in `p` so the backward and the reference use the same support.
// Returns the logprobs and counts the rows in *fallbacks.
std::vector<float> PolicyRowLogprobs(const core::Tensor& logits, PackedBatch& p, int64_t vocab,
                                     int64_t* fallbacks) {
  std::vector<float> logprobs = RowLogprobs(logits, p, p.kept_counts.data(), vocab);
  *fallbacks = 0;
  for (int64_t r = 0; r < p.batch * p.width; ++r) {
    if (std::isinf(logprobs[r])) {
      p.kept_counts[r] = 0;
      ++*fallbacks;
    }
  }
  return *fallbacks == 0 ? logprobs : RowLogprobs(logits, p, p.kept_counts.data(), vocab);
}

// Sets reference_logits[r, j] = -inf for every token j outside the policy's kept set of row r
// (its kept_counts[r] largest logits, ties towards the lower id, as kernels/cpu/sampling.h keeps
// them): the reference is then scored over the policy's action subspace.
void RestrictToPolicySupport(const core::Tensor& policy_logits, const PackedBatch& p, int64_t vocab,
                             core::Tensor& reference_logits) {
  std::vector<int32_t> order(vocab);
  for (int64_t r = 0; r < p.batch * p.width; ++r) {
    const int32_t kept = p.kept_counts[r];
    if (p.targets[r] < 0 || kept <= 0 || kept >= vocab) continue;
    const float* policy = policy_logits.data<float>() + r * vocab;
    float* reference = reference_logits.data<float>() + r * vocab;
    std::iota(order.begin(), order.end(), 0);
    std::nth_element(order.begin(), order.begin() + kept, order.end(), [&](int32_t a, int32_t b) {
      return policy[a] != policy[b] ? policy[a] > policy[b] : a < b;
    });
    for (int64_t i = kept; i < vocab; ++i) {
      reference[order[i]] = -std::numeric_limits<float>::infinity();
    }
  }
}

std::vector<std::vector<float>> PerSample(const std::vector<float>& rows, const PackedBatch& p,
                                          absl::Span<const RolloutSample> samples) {
  std::vector<std::vector<float>> out;
  for (size_t b = 0; b < samples.size(); ++b) {
    const float* first = rows.data() + p.first_scored[b];
    out.emplace_back(first, first + samples[b].completion.size());
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::vector<float>>> ScoreCompletions(
    const model::Model& model, absl::Span<const RolloutSample> samples, bool keep_routing,
    bool keep_sampling_mask) {
  V4RL_RETURN_IF_ERROR(ValidateSamples(model.config, samples, keep_routing, keep_sampling_mask));
  PackedBatch p = Pack(model.config, samples, keep_routing, keep_sampling_mask);
  V4RL_ASSIGN_OR_RETURN(model::ForwardOutput forward,
                        model::Forward(model, p.input_ids.view(), ReplayOptions(p)));
  int64_t fallbacks = 0;
  return PerSample(PolicyRowLogprobs(forward.logits, p, model.config.vocab_size, &fallbacks), p,
                   samples);
}

absl::StatusOr<RlStepResult> RlLossAndGradients(const model::Model& policy,
                                                const model::Model* reference,
                                                absl::Span<const RolloutSample> samples,
                                                const RlStepOptions& options,
                                                model::ModelWeights* grads) {
  const model::ModelConfig& config = policy.config;
  V4RL_RETURN_IF_ERROR(
      ValidateSamples(config, samples, options.keep_routing, options.keep_sampling_mask));
  const bool use_reference = options.grpo.kl_coef > 0;
  if (use_reference && reference == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "rl step: grpo.kl_coef = %g needs a reference model, got none", options.grpo.kl_coef));
  }
  if (use_reference && (reference->config.vocab_size != config.vocab_size ||
                        reference->config.num_layers != config.num_layers ||
                        reference->config.num_experts_per_tok != config.num_experts_per_tok)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "rl step: the reference model has vocab_size %d, %d layers and k = %d; expected the "
        "policy's %d, %d and %d", reference->config.vocab_size, reference->config.num_layers,
        reference->config.num_experts_per_tok, config.vocab_size, config.num_layers,
        config.num_experts_per_tok));
  }
  V4RL_RETURN_IF_ERROR(CheckLags(samples, options));
  PackedBatch p = Pack(config, samples, options.keep_routing, options.keep_sampling_mask);
  const int64_t rows = p.batch * p.width, vocab = config.vocab_size;

  model::ForwardOptions forward_options = ReplayOptions(p);
  forward_options.return_hidden = true;
  forward_options.return_streams = true;
  forward_options.save_activations = !options.recompute;
  forward_options.save_block_inputs = options.recompute;
  forward_options.return_routing = options.recompute;
  V4RL_ASSIGN_OR_RETURN(model::ForwardOutput forward,
                        model::Forward(policy, p.input_ids.view(), forward_options));
  RlStepResult result;
  RlStepMetrics& m = result.metrics;
  result.learner_logprobs = PerSample(
      PolicyRowLogprobs(forward.logits, p, vocab, &m.kept_set_fallbacks), p, samples);

  std::vector<std::vector<float>> reference_logprobs(samples.size());
  if (use_reference) {
    V4RL_ASSIGN_OR_RETURN(model::ForwardOutput ref_forward,
                          model::Forward(*reference, p.input_ids.view(), ReplayOptions(p)));
    RestrictToPolicySupport(forward.logits, p, vocab, ref_forward.logits);
    reference_logprobs = PerSample(RowLogprobs(ref_forward.logits, p, nullptr, vocab), p, samples);
  }

  std::vector<GrpoSequence> sequences;
  for (size_t b = 0; b < samples.size(); ++b) {
    sequences.push_back({samples[b].group, samples[b].reward, result.learner_logprobs[b],
                         samples[b].rollout_logprobs, reference_logprobs[b]});
  }
  V4RL_ASSIGN_OR_RETURN(GrpoResult grpo, GrpoLoss(sequences, options.grpo));

  // d loss / d logprobs, scattered back to the rows, then to the logits and the parameters.
  std::vector<float> grad_logprobs(rows, 0.0f);
  for (size_t b = 0; b < samples.size(); ++b) {
    std::copy(grpo.grad_learner_logprobs[b].begin(), grpo.grad_learner_logprobs[b].end(),
              grad_logprobs.begin() + p.first_scored[b]);
  }
  core::Tensor dlogits = core::Tensor::Empty(core::DType::kF32, {p.batch, p.width, vocab});
  kernels::cpu::TokenLogprobsBackwardRef<float>(
      forward.logits.data<float>(), p.targets.data(), p.kept_counts.data(), rows, vocab,
      grad_logprobs.data(), nullptr, dlogits.data<float>(), &core::ThreadPool::Default());
  model::Backward(policy, p.input_ids.view(), forward, dlogits.view(),
                  {.recompute = options.recompute}, grads);

  m.loss = grpo.loss;
  m.mean_ratio = grpo.mean_ratio;
  m.clip_fraction = grpo.clip_fraction;
  m.mean_kl = grpo.mean_kl;
  m.opsm_fraction = grpo.opsm_fraction;
  m.num_tokens = grpo.num_tokens;
  for (const RolloutSample& s : samples) {
    m.mean_reward += s.reward / samples.size();
    const bool known = options.current_version >= 0 && s.weight_version >= 0;
    m.lags.push_back(known ? options.current_version - s.weight_version : -1);
    m.max_lag = std::max(m.max_lag, m.lags.back());
  }
  result.advantages = std::move(grpo.advantages);
  return result;
}

absl::StatusOr<RlStepResult> RlStep(const model::Model& policy, const model::Model* reference,
                                    absl::Span<const RolloutSample> samples,
                                    const RlStepOptions& options,
                                    const std::vector<TrainableParameter>& parameters,
                                    model::ModelWeights* grads, Optimizer& optimizer, float lr,
                                    double grad_clip) {
  ZeroGradients(parameters);
  V4RL_ASSIGN_OR_RETURN(RlStepResult result,
                        RlLossAndGradients(policy, reference, samples, options, grads));
  result.grad_norm = ClipGradientNorm(parameters, grad_clip);
  optimizer.Step(lr);
  return result;
}

}  // namespace v4rl::learner
