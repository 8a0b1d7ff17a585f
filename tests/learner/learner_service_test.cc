// The Learner service over real gRPC on loopback with a real RocksDB store: WaitForWeightVersion
// wakes when another thread publishes, times out naming the newest version, honours the client's
// deadline; submitted ids and payloads reach the inbox in order; the shared token is required.
#include "learner/learner_service.h"

#include <filesystem>
#include <thread>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "protos/server_service.h"
#include "store/rocksdb_trajectory_store.h"

namespace v4rl::learner {
namespace {

using ::testing::HasSubstr;

class LearnerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = ::testing::TempDir() + "/learner_service_store";
    std::filesystem::remove_all(dir);
    auto store = store::RocksDbTrajectoryStore::Open(dir, store::RocksDbStoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    service_ = std::make_unique<LearnerServiceImpl>(store_.get(), &board_, &inbox_, "tok");
    auto running = protos::StartServer({service_.get()});
    ASSERT_TRUE(running.ok()) << running.status();
    running_ = std::move(*running);
    stub_ = v4rl::LearnerService::NewStub(
        grpc::CreateChannel(running_.address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { running_.server->Shutdown(); }

  grpc::Status Wait(int64_t version, int64_t timeout_ms, WaitForWeightVersionResponse* response,
                    int64_t client_deadline_ms = 0, const std::string& token = "tok") {
    grpc::ClientContext context;
    protos::AttachToken(context, token);
    if (client_deadline_ms > 0) {
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(client_deadline_ms));
    }
    WaitForWeightVersionRequest request;
    request.set_version(version);
    request.set_timeout_ms(timeout_ms);
    return stub_->WaitForWeightVersion(&context, request, response);
  }

  std::unique_ptr<store::RocksDbTrajectoryStore> store_;
  WeightVersionBoard board_;
  TrajectoryInbox inbox_;
  std::unique_ptr<LearnerServiceImpl> service_;
  protos::RunningServer running_;
  std::unique_ptr<v4rl::LearnerService::Stub> stub_;
};

TEST_F(LearnerServiceTest, WaitReturnsWhenAnotherThreadPublishes) {
  board_.Publish(0);
  std::thread publisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    board_.Publish(1);
    board_.Publish(3);
  });
  WaitForWeightVersionResponse response;
  const grpc::Status status = Wait(2, 10000, &response);
  publisher.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.version(), 3);
  const grpc::Status late = Wait(4, 50, &response);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(late.error_message(), HasSubstr("weight version 4 not published in time; the newest is 3"));
  // timeout_ms 0: the client's deadline bounds the wait.
  EXPECT_EQ(Wait(9, 0, &response, 100).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(Wait(1, 0, &response, 100, "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(LearnerServiceTest, SubmittedTrajectoriesReachTheInboxInOrder) {
  store::TrajectoryHeader header;
  header.job_id = "job";
  header.policy_version = 1;
  std::vector<store::TrajectoryId> ids;
  for (int i = 0; i < 2; ++i) {
    auto id = store_->Begin(header, std::vector<int32_t>{0, 4});
    ASSERT_TRUE(id.ok());
    store::CompletionTokens tokens;
    tokens.token_ids = {5, 1};
    tokens.logprobs = {-1, -2};
    tokens.weight_versions = {1, 1};
    tokens.kept_set_sizes = {3, 3};
    ASSERT_TRUE(store_->AppendTokens(*id, 0, tokens).ok());
    if (i == 0) {
      ASSERT_TRUE(store_->Finish(*id, store::TrajectoryStatus::kComplete).ok());
      ASSERT_TRUE(store_->AddReward(*id, {.source_id = "v", .value = 1}).ok());
    }
    ids.push_back(*id);
  }
  SubmitTrajectoriesRequest request;
  request.add_trajectory_ids(ids[0]);
  request.add_trajectory_ids(ids[1]);  // still in progress
  SubmitTrajectoriesResponse response;
  {
    grpc::ClientContext context;
    protos::AttachToken(context, "tok");
    const grpc::Status status = stub_->SubmitTrajectories(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("trajectory_ids[1]: trajectory"));
    EXPECT_THAT(status.error_message(), HasSubstr("in_progress"));
  }
  EXPECT_EQ(inbox_.size(), 0);  // nothing queued from a rejected request
  request.mutable_trajectory_ids()->RemoveLast();
  request.add_trajectory_ids(ids[0]);
  grpc::ClientContext context;
  protos::AttachToken(context, "tok");
  ASSERT_TRUE(stub_->SubmitTrajectories(&context, request, &response).ok());
  EXPECT_EQ(response.queued(), 2);
  EXPECT_EQ(inbox_.Drain(), (std::vector<store::TrajectoryId>{ids[0], ids[0]}));
  EXPECT_EQ(inbox_.size(), 0);
}

}  // namespace
}  // namespace v4rl::learner
