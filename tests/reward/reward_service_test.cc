// The Reward service over real gRPC on loopback: scoring, INVALID_ARGUMENT for malformed
// requests (the server keeps serving), the shared token, and standard health checking.
#include "reward/reward_service.h"

#include "actor/chat_tokens.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "protos/health.grpc.pb.h"
#include "protos/server_service.h"

namespace v4rl::reward {
namespace {

class RewardServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto running = protos::StartServer({&service_});
    ASSERT_TRUE(running.ok()) << running.status();
    running_ = std::move(*running);
    channel_ = grpc::CreateChannel(running_.address(), grpc::InsecureChannelCredentials());
    stub_ = v4rl::RewardService::NewStub(channel_);
  }
  void TearDown() override { running_.server->Shutdown(); }

  grpc::Status Score(const ScoreRequest& request, ScoreResponse* response) {
    grpc::ClientContext context;
    return stub_->Score(&context, request, response);
  }

  RewardServiceImpl service_;
  protos::RunningServer running_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v4rl::RewardService::Stub> stub_;
};

ScoreItem Item(const std::string& completion, ReasoningMode mode, const std::string& expected) {
  ScoreItem item;
  item.set_completion(completion + std::string(actor::kEosToken));
  item.set_mode(mode);
  item.mutable_verifier()->set_kind(v4rl::VerifierSpec::ANSWER_KIND_INTEGER);
  item.mutable_verifier()->set_expected(expected);
  return item;
}

TEST_F(RewardServiceTest, ScoresABatchInOrder) {
  ScoreRequest request;
  *request.add_items() = Item("7+5 is 12</think>12", REASONING_MODE_THINK_HIGH, "12");
  *request.add_items() = Item("13", REASONING_MODE_NON_THINK, "12");
  *request.add_items() = Item("no close tag 12", REASONING_MODE_THINK_MAX, "12");
  ScoreResponse response;
  ASSERT_TRUE(Score(request, &response).ok());
  ASSERT_EQ(response.verdicts_size(), 3);
  EXPECT_EQ(response.verdicts(0).reward(), 1.0);
  EXPECT_EQ(response.verdicts(1).reward(), 0.0);
  EXPECT_FALSE(response.verdicts(2).format_ok());
  EXPECT_EQ(response.verdicts(2).reward(), -0.5);
}

TEST_F(RewardServiceTest, MalformedRequestsAreInvalidArgumentAndServerKeepsServing) {
  ScoreResponse response;
  EXPECT_EQ(Score(ScoreRequest(), &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ScoreRequest unknown_mode;
  *unknown_mode.add_items() = Item("1", REASONING_MODE_NON_THINK, "1");
  unknown_mode.mutable_items(0)->set_mode(REASONING_MODE_UNSPECIFIED);
  grpc::Status status = Score(unknown_mode, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("items[0].mode"));
  ScoreRequest bad_expected;
  *bad_expected.add_items() = Item("1", REASONING_MODE_NON_THINK, "one");
  status = Score(bad_expected, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("expected must be an integer"));
  ScoreRequest unknown_kind;
  *unknown_kind.add_items() = Item("1", REASONING_MODE_NON_THINK, "1");
  *unknown_kind.add_items() = Item("1", REASONING_MODE_NON_THINK, "1");
  unknown_kind.mutable_items(1)->mutable_verifier()->set_kind(
      static_cast<v4rl::VerifierSpec::AnswerKind>(7));
  status = Score(unknown_kind, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("items[1].verifier.kind: unknown kind 7"));
  ScoreRequest good;
  *good.add_items() = Item("1", REASONING_MODE_NON_THINK, "1");
  EXPECT_TRUE(Score(good, &response).ok());
}

// Verbatim: the whole completion against the expected text, no chat grammar and no trimming
// (the synthetic tasks' exact token match, as text).
TEST_F(RewardServiceTest, VerbatimComparesTheWholeCompletion) {
  ScoreRequest request;
  for (const char* completion : {"168<eos>", " 168<eos>", "168"}) {
    ScoreItem* item = request.add_items();
    item->set_completion(completion);
    item->set_mode(REASONING_MODE_NON_THINK);
    item->mutable_verifier()->set_kind(v4rl::VerifierSpec::ANSWER_KIND_VERBATIM);
    item->mutable_verifier()->set_expected("168<eos>");
    item->mutable_verifier()->set_format_error_reward(0);
  }
  ScoreResponse response;
  ASSERT_TRUE(Score(request, &response).ok());
  ASSERT_EQ(response.verdicts_size(), 3);
  EXPECT_EQ(response.verdicts(0).reward(), 1.0);
  EXPECT_TRUE(response.verdicts(0).correct());
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(response.verdicts(i).reward(), 0.0) << i;
    EXPECT_TRUE(response.verdicts(i).format_ok()) << i;
  }
}

TEST_F(RewardServiceTest, HealthCheckReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&context, request, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(RewardServiceToken, RequiresTheSharedToken) {
  RewardServiceImpl service("s3cret");
  auto running = protos::StartServer({&service});
  ASSERT_TRUE(running.ok());
  auto stub = v4rl::RewardService::NewStub(
      grpc::CreateChannel(running->address(), grpc::InsecureChannelCredentials()));
  ScoreRequest request;
  *request.add_items() = Item("1", REASONING_MODE_NON_THINK, "1");
  ScoreResponse response;
  grpc::ClientContext without;
  EXPECT_EQ(stub->Score(&without, request, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext with;
  protos::AttachToken(with, "s3cret");
  EXPECT_TRUE(stub->Score(&with, request, &response).ok());
  running->server->Shutdown();
}

}  // namespace
}  // namespace v4rl::reward
