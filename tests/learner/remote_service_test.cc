// The GRPO job's gRPC adapters against real services on loopback: RemoteRollout returns exactly
// what InProcessRollout returns for the same weights and seeds (tokens, logprobs, kept sets,
// routing, versions), also after its worker went away mid-job and a supervisor brought a new one
// up on the latest published weights; the same with the weights streamed (WeightTransfer::kStream)
// to a worker that comes back on its own initial weights, as a CONNECT worker does; RemoteReward
// scores exactly as ExactMatchReward.
#include "learner/remote_service.h"

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "learner/synthetic_tasks.h"
#include "model/init.h"
#include "protos/server_service.h"
#include "reward/reward_service.h"
#include "rollout/rollout_service.h"

namespace v4rl::learner {
namespace {

// Serves a service object from this process, restarted on Recover: a new server (and, for
// rollout, a new RolloutServiceImpl loaded from the checkpoint) on a new port.
class InProcessServerSupervisor final : public WorkerSupervisor {
 public:
  // With `restart_model`, every worker starts on that model as version -1 (not the published
  // one) and Recover says it does not serve the latest: a CONNECT worker restarted by hand.
  explicit InProcessServerSupervisor(bool rollout, const model::Model* restart_model = nullptr)
      : rollout_(rollout), restart_model_(restart_model) {}
  ~InProcessServerSupervisor() override { Kill(); }
  std::string address() const override { return running_.address(); }
  std::string Describe() const override { return "test worker at " + address(); }
  absl::StatusOr<bool> Recover(const std::string& dir, int64_t version) override {
    Kill();
    ++recoveries;
    grpc::Service* service = &reward_;
    if (rollout_) {
      absl::StatusOr<model::Model> model =
          restart_model_ != nullptr ? *restart_model_ : model::Model::Load(dir);
      if (!model.ok()) return model.status();
      rollout::RolloutServiceOptions options;
      options.batch_window_us = 0;
      auto created = rollout::RolloutServiceImpl::Create(
          *std::move(model), restart_model_ != nullptr ? -1 : version, options);
      if (!created.ok()) return created.status();
      rollout_service_ = *std::move(created);
      service = rollout_service_.get();
    }
    absl::StatusOr<protos::RunningServer> running = protos::StartServer({service});
    if (!running.ok()) return running.status();
    running_ = *std::move(running);
    return restart_model_ == nullptr;
  }
  // The worker goes away: its server stops and every later call fails in transport.
  void Kill() {
    if (running_.server != nullptr) running_.server->Shutdown();
    running_ = {};
  }
  int recoveries = 0;
  rollout::RolloutServiceImpl* rollout_service() { return rollout_service_.get(); }

 private:
  const bool rollout_;
  const model::Model* restart_model_;
  reward::RewardServiceImpl reward_;
  std::unique_ptr<rollout::RolloutServiceImpl> rollout_service_;
  protos::RunningServer running_;
};

void ExpectSameResults(const std::vector<RolloutResult>& got,
                       const std::vector<RolloutResult>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t b = 0; b < want.size(); ++b) {
    EXPECT_EQ(got[b].generation.tokens, want[b].generation.tokens) << b;
    EXPECT_EQ(got[b].generation.sampling_logprobs, want[b].generation.sampling_logprobs) << b;
    EXPECT_EQ(got[b].generation.model_logprobs, want[b].generation.model_logprobs) << b;
    EXPECT_EQ(got[b].generation.kept_counts, want[b].generation.kept_counts) << b;
    EXPECT_EQ(got[b].generation.routed_experts, want[b].generation.routed_experts) << b;
    EXPECT_EQ(got[b].generation.finish_reason, want[b].generation.finish_reason) << b;
    EXPECT_EQ(got[b].weight_version, want[b].weight_version) << b;
  }
}

TEST(RemoteRollout, EqualsInProcessAndSurvivesALostWorker) {
  const std::string root = ::testing::TempDir() + "/remote_rollout_test";
  std::filesystem::remove_all(root);
  const model::Model v0 = model::RandomModel(model::TinyConfig(),
                                             {.scheme = model::InitScheme::kExercise, .seed = 1});
  const model::Model v1 = model::RandomModel(model::TinyConfig(),
                                             {.scheme = model::InitScheme::kExercise, .seed = 2});
  InProcessServerSupervisor supervisor(/*rollout=*/true);
  RemoteRollout remote(&supervisor, root, {});
  InProcessRollout local;
  std::vector<rollout::GenerationRequest> requests = {
      {.prompt = {3, 9, 4}, .seed = 0x9e3779b97f4a7c15ULL},
      {.prompt = {7}, .seed = 12},
      {.prompt = {5, 5, 6, 1, 2}, .seed = 12}};
  rollout::GenerateOptions options;
  options.max_new_tokens = 5;
  options.sampling.top_k = 7;
  options.stop_tokens = {1};
  EXPECT_TRUE(absl::IsFailedPrecondition(remote.Generate(requests, options).status()));

  ASSERT_TRUE(remote.PublishWeights(v0, 0).ok());
  ASSERT_TRUE(local.PublishWeights(v0, 0).ok());
  auto got = remote.Generate(requests, options);
  auto want = local.Generate(requests, options);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok());
  ExpectSameResults(*got, *want);

  ASSERT_TRUE(remote.PublishWeights(v1, 1).ok());
  ASSERT_TRUE(local.PublishWeights(v1, 1).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(remote.PublishWeights(v1, 1)));
  supervisor.Kill();  // the worker is lost between publication and rollout
  got = remote.Generate(requests, options);
  want = local.Generate(requests, options);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameResults(*got, *want);
  EXPECT_EQ((*got)[0].weight_version, 1);
  EXPECT_EQ(remote.recoveries(), 1);
  EXPECT_EQ(supervisor.recoveries, 2);  // start-up, then the recovery
  EXPECT_TRUE(std::filesystem::exists(root + "/version-00000001/model.safetensors"));

  // A request the worker rejects is returned as is, without a recovery.
  requests[1].prompt = {1000};
  const absl::Status rejected = remote.Generate(requests, options).status();
  EXPECT_TRUE(absl::IsInvalidArgument(rejected)) << rejected;
  EXPECT_THAT(rejected.message(), ::testing::HasSubstr("prompts[1].token_ids[0]: 1000"));
  EXPECT_EQ(remote.recoveries(), 1);
}

TEST(RemoteRollout, StreamedWeightsEqualInProcessAndAreReStreamedAfterARestart) {
  const std::string root = ::testing::TempDir() + "/remote_rollout_stream_test";
  std::filesystem::remove_all(root);
  const auto random = [](uint64_t seed) {
    return model::RandomModel(model::TinyConfig(),
                              {.scheme = model::InitScheme::kExercise, .seed = seed});
  };
  const model::Model initial = random(7), v0 = random(1), v1 = random(2);
  InProcessServerSupervisor supervisor(/*rollout=*/true, &initial);
  RemoteOptions stream_options;
  stream_options.weight_transfer = WeightTransfer::kStream;
  stream_options.stream_chunk_bytes = 4096;
  RemoteRollout remote(&supervisor, root, stream_options);
  InProcessRollout local;
  const std::vector<rollout::GenerationRequest> requests = {{.prompt = {3, 9, 4}, .seed = 5},
                                                            {.prompt = {7}, .seed = 12}};
  rollout::GenerateOptions options;
  options.max_new_tokens = 5;
  options.sampling.top_k = 7;

  ASSERT_TRUE(remote.PublishWeights(v0, 0).ok());
  ASSERT_TRUE(local.PublishWeights(v0, 0).ok());
  EXPECT_EQ(supervisor.rollout_service()->streamed_updates(), 1);
  auto got = remote.Generate(requests, options);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameResults(*got, *local.Generate(requests, options));

  ASSERT_TRUE(remote.PublishWeights(v1, 1).ok());
  ASSERT_TRUE(local.PublishWeights(v1, 1).ok());
  EXPECT_EQ(supervisor.rollout_service()->streamed_updates(), 2);
  supervisor.Kill();  // comes back on `initial`, version -1: the latest must be sent again
  got = remote.Generate(requests, options);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameResults(*got, *local.Generate(requests, options));
  EXPECT_EQ((*got)[0].weight_version, 1);
  EXPECT_EQ(remote.recoveries(), 1);
  EXPECT_EQ(supervisor.rollout_service()->streamed_updates(), 1);
  EXPECT_EQ(supervisor.rollout_service()->version(), 1);
}

TEST(RemoteReward, EqualsExactMatch) {
  InProcessServerSupervisor supervisor(/*rollout=*/false);
  RemoteReward remote(&supervisor, {});
  ExactMatchReward local;
  const std::vector<int32_t> answer = {13, 14, kEosId};
  const std::vector<RewardItem> items = {{answer, answer},
                                         {{13, 14}, answer},              // truncated
                                         {{13, 14, kEosId, 5}, answer},   // longer
                                         {{42, 13, 14, kEosId}, answer},  // a leading space
                                         {{kPadId, kBosId}, {kPadId, kBosId}}};
  auto got = remote.Score(items);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, *local.Score(items));
  supervisor.Kill();
  got = remote.Score(items);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::vector<double>{1, 0, 0, 0, 1}));
  EXPECT_EQ(remote.recoveries(), 1);
}

}  // namespace
}  // namespace v4rl::learner
