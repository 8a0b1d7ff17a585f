// GRPO job driver: SFT, then publish -> rollout -> reward -> store -> learner step.
#include "learner/grpo_job.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/file.h"
#include "core/status.h"
#include "learner/checkpoint.h"
#include "learner/rl_step.h"
#include "learner/routing_record.h"
#include "learner/trainable_parameters.h"
#include "model/backward.h"
#include "model/save.h"
#include "nlohmann/json.hpp"
#include "rollout/generate.h"

namespace v4rl::learner {
namespace {

// SplitMix64 finaliser: decorrelated sampling seeds from (seed, step, prompt, sample).
uint64_t MixSeed(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t SampleSeed(uint64_t seed, int64_t step, int64_t prompt, int64_t sample) {
  return MixSeed(MixSeed(MixSeed(MixSeed(seed) ^ step) ^ prompt) ^ sample);
}

// Writes one finished, rewarded sample with its routing (learner/routing_record.h); a stale one
// (beyond max_policy_lag) is stored as aborted. Returns its id.
absl::StatusOr<store::TrajectoryId> StoreSample(const GrpoJobOptions& options,
                                                const model::ModelConfig& config,
                                                const RolloutSample& sample, uint64_t seed,
                                                bool stopped, bool stale,
                                                store::TrajectoryStore* store) {
  store::TrajectoryHeader header;
  header.job_id = options.job_id;
  header.group_id = static_cast<uint64_t>(sample.group);
  header.policy_version = sample.weight_version;
  header.sampling = {.temperature = options.temperature,
                     .top_k = options.top_k,
                     .max_new_tokens = static_cast<int32_t>(options.max_new_tokens),
                     .seed = seed};
  header.routing = StoreRoutingShape(config);
  V4RL_ASSIGN_OR_RETURN(store::TrajectoryId id, store->Begin(header, sample.prompt));
  store::CompletionTokens chunk;
  chunk.token_ids = sample.completion;
  chunk.logprobs = sample.rollout_logprobs;
  chunk.weight_versions.assign(sample.completion.size(), sample.weight_version);
  chunk.kept_set_sizes = sample.kept_counts;
  if (header.routing.enabled()) {
    V4RL_ASSIGN_OR_RETURN(
        chunk.routed_experts,
        CompletionRoutingForStore(config, sample.routed_experts,
                                  static_cast<int64_t>(sample.prompt.size()),
                                  static_cast<int64_t>(sample.completion.size())));
  }
  V4RL_RETURN_IF_ERROR(store->AppendTokens(id, 0, chunk));
  V4RL_RETURN_IF_ERROR(store->Finish(
      id, stale     ? store::TrajectoryStatus::kAborted
          : stopped ? store::TrajectoryStatus::kComplete
                    : store::TrajectoryStatus::kTruncated));
  V4RL_RETURN_IF_ERROR(store->AddReward(
      id, {.source_id = "exact_match", .value = static_cast<float>(sample.reward)}));
  return id;
}

// Sampled pass@1 of `policy` on `eval`: `samples` completions per prompt drawn with `generate`'s
// sampling settings and seeds fixed by (seed, prompt, sample), scored by exact match.
absl::StatusOr<double> SampledAccuracy(const model::Model& policy,
                                       const std::vector<SftExample>& eval,
                                       const rollout::GenerateOptions& generate, int64_t samples,
                                       uint64_t seed) {
  if (samples == 0 || eval.empty()) return 0.0;
  constexpr int64_t kEvalStep = -1;  // seeds disjoint from every training step's
  std::vector<rollout::GenerationRequest> requests;
  for (size_t i = 0; i < eval.size(); ++i) {
    for (int64_t g = 0; g < samples; ++g) {
      requests.push_back({eval[i].prompt, SampleSeed(seed, kEvalStep, i, g)});
    }
  }
  V4RL_ASSIGN_OR_RETURN(std::vector<rollout::GenerationResult> results,
                        rollout::Generate(policy, requests, generate));
  int64_t correct = 0;
  for (size_t r = 0; r < results.size(); ++r) {
    correct += results[r].tokens == eval[r / samples].completion;
  }
  return static_cast<double>(correct) / static_cast<double>(results.size());
}

absl::Status WriteGrpoCheckpoint(const GrpoJobOptions& options, const model::Model& model,
                                 const Optimizer& optimizer, int64_t step, double mean_reward) {
  std::vector<core::Tensor> storage;
  CheckpointContents contents;
  contents.config_json = model::ModelConfigToJson(model.config).dump(2) + "\n";
  contents.weights = model::HubNamedTensors(model.config, model.weights, &storage);
  contents.optimizer_state = optimizer.StateTensors();
  contents.trainer_state = {.step = step,
                            .data_position = step * options.prompts_per_step,
                            .rng_seed = options.seed,
                            .metrics = {{"mean_reward", mean_reward}}};
  return WriteCheckpoint(options.run_dir + "/checkpoints", contents).status();
}

}  // namespace

absl::Status GrpoJobOptions::Validate() const {
  std::vector<std::string> problems;
  if (run_dir.empty()) problems.push_back("run_dir must be set");
  if (steps < 1) problems.push_back(absl::StrFormat("grpo.steps must be >= 1 (got %d)", steps));
  if (prompts_per_step < 1) {
    problems.push_back(
        absl::StrFormat("grpo.prompts_per_step must be >= 1 (got %d)", prompts_per_step));
  }
  if (group_size < 2) {
    problems.push_back(absl::StrFormat("grpo.group_size must be >= 2 (got %d)", group_size));
  }
  if (!(std::isfinite(temperature) && temperature > 0)) {
    problems.push_back(absl::StrFormat("grpo.temperature must be > 0 (got %g)", temperature));
  }
  if (top_k < 0) problems.push_back(absl::StrFormat("grpo.top_k must be >= 0 (got %d)", top_k));
  if (!(lr > 0)) problems.push_back(absl::StrFormat("grpo.lr must be > 0 (got %g)", lr));
  if (warmup_steps < 0) {
    problems.push_back(absl::StrFormat("grpo.warmup_steps must be >= 0 (got %d)", warmup_steps));
  }
  if (eval_samples < 0) {
    problems.push_back(absl::StrFormat("grpo.eval_samples must be >= 0 (got %d)", eval_samples));
  }
  if (!(kl_coef >= 0)) {
    problems.push_back(absl::StrFormat("grpo.kl_coef must be >= 0 (got %g)", kl_coef));
  }
  if (!(clip > 0)) problems.push_back(absl::StrFormat("grpo.clip must be > 0 (got %g)", clip));
  if (max_new_tokens < 1) {
    problems.push_back(
        absl::StrFormat("grpo.max_new_tokens must be >= 1 (got %d)", max_new_tokens));
  }
  if (eval_examples < 1) {
    problems.push_back(absl::StrFormat("grpo.eval_examples must be >= 1 (got %d)", eval_examples));
  }
  if (max_policy_lag < -1) {
    problems.push_back(absl::StrFormat(
        "services.max_policy_lag must be >= 0, or -1 for unbounded (got %d)", max_policy_lag));
  }
  if (!sft.dataset.empty()) {
    problems.push_back("sft.dataset must be empty: the GRPO job trains on a synthetic task");
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError("run config: " + absl::StrJoin(problems, "; "));
}

absl::StatusOr<GrpoJobSummary> RunGrpoJob(const GrpoJobOptions& options,
                                          store::TrajectoryStore* store,
                                          const GrpoJobBackends& backends) {
  V4RL_RETURN_IF_ERROR(options.Validate());
  std::filesystem::create_directories(options.run_dir);
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };

  SftOptions sft = options.sft;
  sft.run_dir = options.run_dir + "/sft";
  sft.quiet = sft.quiet || options.quiet;
  V4RL_RETURN_IF_ERROR(RunSft(sft).status());
  V4RL_ASSIGN_OR_RETURN(const std::string sft_checkpoint,
                        LatestCheckpoint(sft.run_dir + "/checkpoints"));
  V4RL_ASSIGN_OR_RETURN(model::Model policy, model::Model::Load(sft_checkpoint));
  model::Model reference;
  if (options.kl_coef > 0) {
    V4RL_ASSIGN_OR_RETURN(reference, model::Model::Load(sft_checkpoint));
  }

  std::vector<SftExample> eval;
  for (int64_t i = 0; i < options.eval_examples; ++i) {
    eval.push_back(MakeSyntheticExample(sft.synthetic, TaskSplit::kEval, i));
  }
  rollout::GenerateOptions generate;
  generate.max_new_tokens = options.max_new_tokens;
  generate.sampling.temperature = options.temperature;
  generate.sampling.top_k = options.top_k;
  generate.stop_tokens = {kEosId};
  GrpoJobSummary summary;
  V4RL_ASSIGN_OR_RETURN(summary.accuracy_after_sft, ExactMatchAccuracy(policy, eval));
  V4RL_ASSIGN_OR_RETURN(summary.sampled_accuracy_after_sft,
                        SampledAccuracy(policy, eval, generate, options.eval_samples, options.seed));
  if (!options.quiet) {
    std::fprintf(stderr,
                 "after SFT: held-out exact match %.1f%% greedy, %.1f%% sampled (%zu prompts)\n",
                 100 * summary.accuracy_after_sft, 100 * summary.sampled_accuracy_after_sft,
                 eval.size());
  }

  model::ModelWeights grads = model::ZeroGradients(policy.config);
  std::vector<TrainableParameter> parameters = TrainableParameters(policy, grads);
  V4RL_ASSIGN_OR_RETURN(Optimizer optimizer, Optimizer::Create(parameters, sft.muon, sft.adamw));
  std::ofstream metrics(options.run_dir + "/metrics_grpo.jsonl", std::ios::trunc);
  if (!metrics.good()) {
    return absl::PermissionDeniedError(
        absl::StrFormat("cannot write %s/metrics_grpo.jsonl", options.run_dir));
  }

  InProcessRollout in_process_rollout;
  ExactMatchReward exact_match_reward;
  RolloutBackend& rollout =
      backends.rollout != nullptr ? *backends.rollout : in_process_rollout;
  RewardBackend& reward = backends.reward != nullptr ? *backends.reward : exact_match_reward;
  // Version v = the policy after v GRPO steps (0 = the SFT model).
  const auto publish = [&](int64_t version) -> absl::Status {
    V4RL_RETURN_IF_ERROR(rollout.PublishWeights(policy, version));
    if (backends.on_weights_published) backends.on_weights_published(version);
    return absl::OkStatus();
  };
  V4RL_RETURN_IF_ERROR(publish(0));
  RlStepOptions rl;
  rl.grpo.kl_coef = options.kl_coef;
  rl.grpo.clip_low = options.clip;
  rl.grpo.clip_high = options.clip;
  rl.grpo.normalize_std = options.normalize_std;

  const auto lr_at = [&](int64_t step) {
    return options.warmup_steps > 0 && step < options.warmup_steps
               ? options.lr * static_cast<double>(step + 1) / options.warmup_steps
               : options.lr;
  };
  for (int64_t step = 0; step < options.steps; ++step) {
    // Rollout: group_size samples of each of this step's prompts, with the policy of version step.
    std::vector<SftExample> examples;
    std::vector<rollout::GenerationRequest> requests;  // prompt i, sample g at i * group_size + g
    for (int64_t i = 0; i < options.prompts_per_step; ++i) {
      examples.push_back(
          MakeSyntheticExample(sft.synthetic, TaskSplit::kTrain, step * options.prompts_per_step + i));
      for (int64_t g = 0; g < options.group_size; ++g) {
        requests.push_back({examples.back().prompt, SampleSeed(options.seed, step, i, g)});
      }
    }
    V4RL_ASSIGN_OR_RETURN(std::vector<RolloutResult> results,
                          rollout.Generate(requests, generate));
    if (results.size() != requests.size()) {
      return absl::InternalError(absl::StrFormat("%s returned %d results for %d requests",
                                                 rollout.Describe(), results.size(),
                                                 requests.size()));
    }
    // Reward.
    std::vector<RewardItem> reward_items(results.size());
    for (size_t r = 0; r < results.size(); ++r) {
      reward_items[r] = {.completion = results[r].generation.tokens,
                         .expected = examples[r / options.group_size].completion};
    }
    V4RL_ASSIGN_OR_RETURN(const std::vector<double> rewards, reward.Score(reward_items));
    if (rewards.size() != results.size()) {
      return absl::InternalError(absl::StrFormat("%s returned %d rewards for %d items",
                                                 reward.Describe(), rewards.size(),
                                                 results.size()));
    }
    // Store; the learner trains on the samples within the lag bound.
    std::vector<RolloutSample> samples;
    double reward_sum = 0;
    int64_t stale_samples = 0;
    int64_t max_lag = 0;
    for (size_t r = 0; r < results.size(); ++r) {
      const int64_t prompt = static_cast<int64_t>(r) / options.group_size;
      rollout::GenerationResult& result = results[r].generation;
      RolloutSample sample{.prompt = requests[r].prompt,
                           .completion = std::move(result.tokens),
                           .rollout_logprobs = std::move(result.sampling_logprobs),
                           .kept_counts = std::move(result.kept_counts),
                           .routed_experts = std::move(result.routed_experts),
                           .group = step * options.prompts_per_step + prompt,
                           .weight_version = results[r].weight_version};
      sample.reward = rewards[r];
      reward_sum += sample.reward;
      const int64_t lag = step - sample.weight_version;
      max_lag = std::max(max_lag, lag);
      const bool stale = options.max_policy_lag >= 0 && lag > options.max_policy_lag;
      stale_samples += stale;
      V4RL_RETURN_IF_ERROR(StoreSample(options, policy.config, sample, requests[r].seed,
                                       result.finish_reason == rollout::FinishReason::kStop,
                                       stale, store)
                               .status());
      ++summary.trajectories;
      if (!stale) samples.push_back(std::move(sample));
    }
    const double mean_reward = reward_sum / static_cast<double>(results.size());
    summary.mean_rewards.push_back(mean_reward);
    // Learn.
    rl.current_version = step;
    if (samples.empty()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "grpo step %d: all %d samples are beyond max_policy_lag %d (lag up to %d); %s serves "
          "weights older than the published ones",
          step + 1, stale_samples, options.max_policy_lag, max_lag, rollout.Describe()));
    }
    V4RL_ASSIGN_OR_RETURN(RlStepResult step_result,
                          RlStep(policy, options.kl_coef > 0 ? &reference : nullptr, samples, rl,
                                 parameters, &grads, optimizer, static_cast<float>(lr_at(step)),
                                 options.grad_clip));
    V4RL_RETURN_IF_ERROR(publish(step + 1));
    summary.steps = step + 1;
    const RlStepMetrics& m = step_result.metrics;
    metrics << nlohmann::json{{"step", step + 1},
                              {"lr", lr_at(step)},
                              {"mean_reward", mean_reward},
                              {"loss", m.loss},
                              {"mean_ratio", m.mean_ratio},
                              {"clip_fraction", m.clip_fraction},
                              {"mean_kl", m.mean_kl},
                              {"opsm_fraction", m.opsm_fraction},
                              {"num_tokens", m.num_tokens},
                              {"kept_set_fallbacks", m.kept_set_fallbacks},
                              {"grad_norm", step_result.grad_norm},
                              {"weight_version", step},
                              {"max_lag", max_lag},
                              {"stale_samples", stale_samples},
                              {"elapsed_s", elapsed()}}
                   .dump()
            << "\n"
            << std::flush;
    if (!options.quiet) {
      std::fprintf(stderr, "grpo step %lld/%lld  reward %.3f  loss %.4f  kl %.4f  %.1f s\n",
                   static_cast<long long>(step + 1), static_cast<long long>(options.steps),
                   mean_reward, m.loss, m.mean_kl, elapsed());
    }
  }

  V4RL_ASSIGN_OR_RETURN(summary.accuracy_after_grpo, ExactMatchAccuracy(policy, eval));
  V4RL_ASSIGN_OR_RETURN(summary.sampled_accuracy_after_grpo,
                        SampledAccuracy(policy, eval, generate, options.eval_samples, options.seed));
  metrics << nlohmann::json{{"step", summary.steps},
                            {"eval_exact_match", summary.accuracy_after_grpo},
                            {"eval_sampled_accuracy", summary.sampled_accuracy_after_grpo},
                            {"eval_examples", eval.size()},
                            {"elapsed_s", elapsed()}}
                 .dump()
          << "\n"
          << std::flush;
  if (!options.quiet) {
    std::fprintf(stderr, "after GRPO: held-out exact match %.1f%% greedy, %.1f%% sampled\n",
                 100 * summary.accuracy_after_grpo, 100 * summary.sampled_accuracy_after_grpo);
  }
  V4RL_RETURN_IF_ERROR(WriteGrpoCheckpoint(options, policy, optimizer, summary.steps,
                                           summary.mean_rewards.back()));
  const nlohmann::json summary_json = {{"accuracy_after_sft", summary.accuracy_after_sft},
                                       {"accuracy_after_grpo", summary.accuracy_after_grpo},
                                       {"sampled_accuracy_after_sft",
                                        summary.sampled_accuracy_after_sft},
                                       {"sampled_accuracy_after_grpo",
                                        summary.sampled_accuracy_after_grpo},
                                       {"eval_samples_per_prompt", options.eval_samples},
                                       {"eval_examples", eval.size()},
                                       {"steps", summary.steps},
                                       {"mean_reward_per_step", summary.mean_rewards},
                                       {"trajectories", summary.trajectories},
                                       {"elapsed_s", elapsed()}};
  V4RL_RETURN_IF_ERROR(
      core::WriteFileAtomic(options.run_dir + "/summary.json", summary_json.dump(2) + "\n"));
  return summary;
}

}  // namespace v4rl::learner
