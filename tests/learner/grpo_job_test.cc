// The in-process GRPO job on a tiny char-level model: a few SFT steps, then GRPO steps whose every
// sample lands in the trajectory store; the run directory and summary are checked, and bad options
// are rejected with the field named.
#include "learner/grpo_job.h"

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "learner/rollout_client.h"
#include "learner/routing_record.h"
#include "model/forward.h"
#include "model/save.h"
#include "nlohmann/json.hpp"
#include "store/memory_trajectory_store.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::learner {
namespace {

GrpoJobOptions TinyOptions(const std::string& name) {
  GrpoJobOptions options;
  options.run_dir = ::testing::TempDir() + "/" + name;
  options.sft.init_config =
      std::string(std::getenv("V4RL_SOURCE_DIR")) + "/configs/models/tiny_char.json";
  options.sft.synthetic = {.name = "addition", .min_digits = 1, .max_digits = 1, .seed = 3};
  options.sft.steps = 4;
  options.sft.batch_size = 8;
  options.sft.schedule = {.peak_lr = 3e-3, .end_lr = 3e-4, .warmup_steps = 1};
  options.sft.eval_examples = 4;
  options.steps = 3;
  options.prompts_per_step = 2;
  options.group_size = 3;
  options.max_new_tokens = 4;
  options.eval_examples = 6;
  options.kl_coef = 0.01;
  options.warmup_steps = 2;
  options.quiet = true;
  return options;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(GrpoJob, WritesRunDirectoryAndEverySample) {
  const GrpoJobOptions options = TinyOptions("grpo_job_tiny");
  std::filesystem::remove_all(options.run_dir);
  store::MemoryTrajectoryStore trajectories;
  V4RL_ASSERT_OK_AND_ASSIGN(GrpoJobSummary summary, RunGrpoJob(options, &trajectories));

  EXPECT_EQ(summary.steps, 3);
  ASSERT_EQ(summary.mean_rewards.size(), 3u);
  for (double r : summary.mean_rewards) EXPECT_THAT(r, ::testing::AllOf(::testing::Ge(0), ::testing::Le(1)));
  EXPECT_EQ(summary.trajectories, 3 * 2 * 3);

  EXPECT_TRUE(std::filesystem::exists(options.run_dir + "/sft/summary.json"));
  EXPECT_TRUE(model::Model::Load(options.run_dir + "/checkpoints/step-00000003").ok());
  const nlohmann::json json = nlohmann::json::parse(ReadAll(options.run_dir + "/summary.json"));
  EXPECT_EQ(json["accuracy_after_sft"].get<double>(), summary.accuracy_after_sft);
  EXPECT_EQ(json["accuracy_after_grpo"].get<double>(), summary.accuracy_after_grpo);
  EXPECT_EQ(json["steps"].get<int64_t>(), 3);
  EXPECT_EQ(json["mean_reward_per_step"].size(), 3u);
  for (const char* key : {"sampled_accuracy_after_sft", "sampled_accuracy_after_grpo"}) {
    EXPECT_THAT(json[key].get<double>(), ::testing::AllOf(::testing::Ge(0), ::testing::Le(1)))
        << key;
  }
  EXPECT_EQ(json["sampled_accuracy_after_grpo"].get<double>(), summary.sampled_accuracy_after_grpo);
  EXPECT_EQ(json["eval_samples_per_prompt"].get<int64_t>(), options.eval_samples);
  std::istringstream metrics(ReadAll(options.run_dir + "/metrics_grpo.jsonl"));
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(metrics, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u + 1);  // one per step, one for the final evaluation
  // Linear warmup over options.warmup_steps = 2: lr/2, then lr.
  EXPECT_DOUBLE_EQ(lines[0]["lr"].get<double>(), options.lr / 2);
  EXPECT_DOUBLE_EQ(lines[1]["lr"].get<double>(), options.lr);
  EXPECT_DOUBLE_EQ(lines[2]["lr"].get<double>(), options.lr);

  // Every sample is stored: finished, rewarded with its step's reward, grouped by prompt.
  V4RL_ASSERT_OK_AND_ASSIGN(std::vector<store::TrajectoryMeta> metas,
                            trajectories.Scan(store::ScanQuery{}));
  ASSERT_EQ(metas.size(), 18u);
  std::vector<double> reward_sums(3, 0);
  std::vector<int> group_sizes(6, 0);
  for (const store::TrajectoryMeta& meta : metas) {
    EXPECT_TRUE(store::IsTerminal(meta.status));
    ASSERT_EQ(meta.rewards.size(), 1u);
    ASSERT_GE(meta.header.policy_version, 0);
    ASSERT_LT(meta.header.policy_version, 3);
    ASSERT_LT(meta.header.group_id, 6u);
    reward_sums[meta.header.policy_version] += meta.rewards[0].value;
    ++group_sizes[meta.header.group_id];
    EXPECT_EQ(meta.header.group_id / 2, static_cast<uint64_t>(meta.header.policy_version));
  }
  for (int s = 0; s < 3; ++s) EXPECT_DOUBLE_EQ(reward_sums[s] / 6, summary.mean_rewards[s]) << s;
  for (int g = 0; g < 6; ++g) EXPECT_EQ(group_sizes[g], 3) << g;

  // Every sample keeps its routing (learned layers, completion tokens) and its sampling seed.
  V4RL_ASSERT_OK_AND_ASSIGN(store::Trajectory first, trajectories.Read(metas[0].id));
  const store::RoutingShape& routing = first.meta.header.routing;
  EXPECT_EQ(routing.num_moe_layers, 2);  // tiny_char: hash, moe, moe
  EXPECT_EQ(routing.num_topk, 2);
  EXPECT_EQ(static_cast<int64_t>(first.completion.routed_experts.size()),
            routing.ids_per_token() * first.completion.num_tokens());
  EXPECT_NE(first.meta.header.sampling.seed, 0u);
}

// A rollout backend one version behind: it really generates, with the weights published before
// the latest (kept as a saved and reloaded copy), like an asynchronous worker that has not
// picked up the newest weights yet.
class OneVersionBehindRollout final : public RolloutBackend {
 public:
  explicit OneVersionBehindRollout(std::string dir) : dir_(std::move(dir)) {}
  absl::Status PublishWeights(const model::Model& model, int64_t version) override {
    const std::string path = dir_ + "/v" + std::to_string(version);
    V4RL_RETURN_IF_ERROR(model::SaveModel(path, model.config, model.weights));
    V4RL_ASSIGN_OR_RETURN(model::Model copy, model::Model::Load(path));
    if (!latest_.has_value()) {  // the first version is served at once
      served_ = std::make_unique<model::Model>(copy);
      served_version_ = version;
    } else {
      served_ = std::make_unique<model::Model>(std::move(*latest_));
      served_version_ = latest_version_;
    }
    latest_ = std::move(copy);
    latest_version_ = version;
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<RolloutResult>> Generate(
      absl::Span<const rollout::GenerationRequest> requests,
      const rollout::GenerateOptions& options) override {
    InProcessRollout inner;
    V4RL_RETURN_IF_ERROR(inner.PublishWeights(*served_, served_version_));
    return inner.Generate(requests, options);
  }
  std::string Describe() const override { return "one-version-behind rollout"; }

 private:
  std::string dir_;
  std::unique_ptr<model::Model> served_;
  int64_t served_version_ = -1;
  std::optional<model::Model> latest_;
  int64_t latest_version_ = -1;
};

TEST(GrpoJob, LagIsRecordedAndBoundedByMaxPolicyLag) {
  GrpoJobOptions options = TinyOptions("grpo_job_lag");
  std::filesystem::remove_all(options.run_dir);
  options.max_policy_lag = 1;
  {
    OneVersionBehindRollout rollout(options.run_dir + "/served");
    store::MemoryTrajectoryStore trajectories;
    V4RL_ASSERT_OK_AND_ASSIGN(GrpoJobSummary summary,
                              RunGrpoJob(options, &trajectories, {.rollout = &rollout, .reward = nullptr, .on_weights_published = {}}));
    EXPECT_EQ(summary.steps, 3);
    std::istringstream metrics(ReadAll(options.run_dir + "/metrics_grpo.jsonl"));
    std::vector<int64_t> max_lags;
    for (std::string line; std::getline(metrics, line);) {
      const nlohmann::json json = nlohmann::json::parse(line);
      if (json.contains("max_lag")) {
        max_lags.push_back(json["max_lag"].get<int64_t>());
        EXPECT_EQ(json["stale_samples"].get<int64_t>(), 0);
      }
    }
    // Step 1 samples version 0 (the only one); steps 2 and 3 sample the version before theirs.
    EXPECT_EQ(max_lags, (std::vector<int64_t>{0, 1, 1}));
    V4RL_ASSERT_OK_AND_ASSIGN(std::vector<store::TrajectoryMeta> metas,
                              trajectories.Scan(store::ScanQuery{}));
    for (const store::TrajectoryMeta& meta : metas) EXPECT_LE(meta.header.policy_version, 1);
  }
  // Bound 0: step 2's samples are all one version behind, so none may be trained on.
  std::filesystem::remove_all(options.run_dir + "/checkpoints");
  std::filesystem::remove_all(options.run_dir + "/served");
  options.max_policy_lag = 0;
  OneVersionBehindRollout rollout(options.run_dir + "/served");
  store::MemoryTrajectoryStore trajectories;
  const absl::Status status = RunGrpoJob(options, &trajectories, {.rollout = &rollout, .reward = nullptr, .on_weights_published = {}}).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("beyond max_policy_lag 0"));
  V4RL_ASSERT_OK_AND_ASSIGN(std::vector<store::TrajectoryMeta> metas,
                            trajectories.Scan(store::ScanQuery{}));
  int aborted = 0;
  for (const store::TrajectoryMeta& meta : metas) {
    aborted += meta.status == store::TrajectoryStatus::kAborted;
  }
  EXPECT_EQ(aborted, 6);  // step 2's samples, stored but not trained on
}

TEST(GrpoJob, RejectsBadOptionsNamingTheField) {
  GrpoJobOptions options = TinyOptions("grpo_job_bad");
  options.group_size = 1;
  options.temperature = 0;
  options.warmup_steps = -1;
  options.eval_samples = -2;
  store::MemoryTrajectoryStore trajectories;
  const absl::Status status = RunGrpoJob(options, &trajectories).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_THAT(status.message(), ::testing::HasSubstr("grpo.group_size must be >= 2 (got 1)"));
  EXPECT_THAT(status.message(), ::testing::HasSubstr("grpo.temperature must be > 0"));
  EXPECT_THAT(status.message(), ::testing::HasSubstr("grpo.warmup_steps must be >= 0 (got -1)"));
  EXPECT_THAT(status.message(), ::testing::HasSubstr("grpo.eval_samples must be >= 0 (got -2)"));
}

}  // namespace
}  // namespace v4rl::learner
