// The Rollout service over real gRPC on loopback with a tiny random model: streamed results equal
// a direct rollout::Generate call, the per-mode length budget, INVALID_ARGUMENT for malformed
// requests (the server keeps serving), batching of concurrent calls, UpdateWeights (versions, new
// outputs, every call on one version while updates race it), StreamWeights (the same generations
// as the path update; malformed, truncated and cancelled streams rejected with the field named
// while the old version keeps serving), standard health checking and the shared token.
#include "rollout/rollout_service.h"

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "model/init.h"
#include "model/save.h"
#include "protos/health.grpc.pb.h"
#include "protos/server_service.h"
#include "rollout/generate.h"
#include "rollout/weight_stream.h"

namespace v4rl::rollout {
namespace {

using ::testing::HasSubstr;

model::ModelConfig TestConfig() {
  model::ModelConfig config = model::TinyConfig();
  config.max_position_embeddings = 64;  // small enough to send a prompt beyond it
  return config;
}

model::Model TestModel(uint64_t seed) {
  return model::RandomModel(TestConfig(), {.scheme = model::InitScheme::kExercise, .seed = seed});
}

RolloutServiceOptions TestOptions(std::string token = "") {
  RolloutServiceOptions options;
  options.max_new_tokens_non_think = 4;
  options.max_new_tokens_think_high = 6;
  options.max_new_tokens_think_max = 8;
  options.token = std::move(token);
  return options;
}

GenerateRequest TestRequest() {
  GenerateRequest request;
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 3}, {99, 1}, {42, 42, 7, 127, 0}};
  for (const auto& tokens : prompts) {
    request.add_prompts()->mutable_token_ids()->Assign(tokens.begin(), tokens.end());
  }
  request.set_mode(REASONING_MODE_THINK_HIGH);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_top_p(0.9f);
  request.mutable_sampling()->set_top_k(20);
  request.mutable_sampling()->set_max_new_tokens(100);  // clamped to THINK_HIGH's 6
  request.mutable_sampling()->set_seed(7);
  request.add_stop_tokens(11);
  return request;
}

// What the service should stream for `request` (already within its mode's budget of
// `max_new_tokens`), straight from rollout::Generate.
std::vector<GenerationResult> DirectGenerate(const model::Model& model,
                                             const GenerateRequest& request,
                                             int64_t max_new_tokens) {
  std::vector<GenerationRequest> requests;
  for (int b = 0; b < request.prompts_size(); ++b) {
    requests.push_back(
        {.prompt = {request.prompts(b).token_ids().begin(), request.prompts(b).token_ids().end()},
         .seed = request.sampling().seed() + b});
  }
  GenerateOptions options;
  options.max_new_tokens = max_new_tokens;
  options.sampling.greedy = request.sampling().temperature() == 0;
  options.sampling.temperature = options.sampling.greedy ? 1.0f : request.sampling().temperature();
  options.sampling.top_p = options.sampling.greedy ? 1.0f : request.sampling().top_p();
  options.sampling.top_k = options.sampling.greedy ? 0 : request.sampling().top_k();
  options.stop_tokens.assign(request.stop_tokens().begin(), request.stop_tokens().end());
  auto results = Generate(model, requests, options);
  EXPECT_TRUE(results.ok()) << results.status();
  return results.ok() ? *results : std::vector<GenerationResult>();
}

std::vector<int32_t> UnpackRouting(const GenerateResult& result) {
  const int bytes_per_id = result.routing().num_experts() <= 256 ? 1 : 2;
  const std::string& packed = result.routed_experts();
  std::vector<int32_t> ids(packed.size() / bytes_per_id);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<uint8_t>(packed[i * bytes_per_id]);
    if (bytes_per_id == 2) ids[i] |= static_cast<uint8_t>(packed[i * 2 + 1]) << 8;
  }
  return ids;
}

void ExpectEqual(const GenerateResult& got, const GenerationResult& want, int index) {
  EXPECT_EQ(got.prompt_index(), index);
  EXPECT_EQ(std::vector<int32_t>(got.tokens().begin(), got.tokens().end()), want.tokens);
  EXPECT_EQ(std::vector<float>(got.sampling_logprobs().begin(), got.sampling_logprobs().end()),
            want.sampling_logprobs);
  EXPECT_EQ(std::vector<float>(got.model_logprobs().begin(), got.model_logprobs().end()),
            want.model_logprobs);
  EXPECT_EQ(std::vector<int32_t>(got.kept_counts().begin(), got.kept_counts().end()),
            want.kept_counts);
  EXPECT_EQ(UnpackRouting(got), want.routed_experts);
  EXPECT_EQ(got.finish_reason(),
            want.finish_reason == FinishReason::kStop ? FINISH_REASON_STOP : FINISH_REASON_LENGTH);
}

class RolloutServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto service = RolloutServiceImpl::Create(model_a_, 1, TestOptions());
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    auto running = protos::StartServer({service_.get()});
    ASSERT_TRUE(running.ok()) << running.status();
    running_ = std::move(*running);
    channel_ = grpc::CreateChannel(running_.address(), grpc::InsecureChannelCredentials());
    stub_ = v4rl::RolloutService::NewStub(channel_);
  }
  void TearDown() override { running_.server->Shutdown(); }

  grpc::Status Call(const GenerateRequest& request, std::vector<GenerateResult>* results) {
    results->clear();
    grpc::ClientContext context;
    auto reader = stub_->Generate(&context, request);
    GenerateResult result;
    while (reader->Read(&result)) results->push_back(result);
    return reader->Finish();
  }

  grpc::Status Update(const std::string& dir, int64_t version) {
    grpc::ClientContext context;
    UpdateWeightsRequest request;
    request.set_checkpoint_dir(dir);
    request.set_version(version);
    UpdateWeightsResponse response;
    return stub_->UpdateWeights(&context, request, &response);
  }

  // Saves model_b_ once per test and returns its directory.
  std::string SaveModelB() {
    const std::string dir = ::testing::TempDir() + "/rollout_service_model_b";
    const absl::Status saved = model::SaveModel(dir, model_b_.config, model_b_.weights);
    EXPECT_TRUE(saved.ok()) << saved;
    return dir;
  }

  model::Model model_a_ = TestModel(1);
  model::Model model_b_ = TestModel(2);
  std::unique_ptr<RolloutServiceImpl> service_;
  protos::RunningServer running_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v4rl::RolloutService::Stub> stub_;
};

TEST_F(RolloutServiceTest, StreamsWhatGenerateReturnsForTheSameSeeds) {
  const GenerateRequest request = TestRequest();
  std::vector<GenerateResult> results;
  ASSERT_TRUE(Call(request, &results).ok());
  const std::vector<GenerationResult> want = DirectGenerate(model_a_, request, 6);
  ASSERT_EQ(results.size(), want.size());
  for (int b = 0; b < static_cast<int>(want.size()); ++b) {
    ExpectEqual(results[b], want[b], b);
    EXPECT_EQ(results[b].weight_version(), 1);
    EXPECT_EQ(results[b].max_new_tokens(), 6);
    EXPECT_EQ(results[b].routing().num_moe_layers(), 4);
    EXPECT_EQ(results[b].routing().num_topk(), 2);
    EXPECT_EQ(results[b].routing().num_experts(), 8);
    EXPECT_EQ(results[b].num_positions(),
              request.prompts(b).token_ids_size() + results[b].tokens_size() - 1);
  }
}

// A prompt's own seed replaces sampling.seed + index, so a client can batch samples with
// unrelated seeds (the GRPO job's hashed per-sample seeds) and get each sample's own tokens.
TEST_F(RolloutServiceTest, PerPromptSeedOverridesTheStreamSeed) {
  GenerateRequest request = TestRequest();
  request.mutable_prompts(0)->set_seed(1234567);
  request.mutable_prompts(2)->set_seed(9);  // equals what prompt 2 gets by default (7 + 2)
  std::vector<GenerateResult> results;
  ASSERT_TRUE(Call(request, &results).ok());
  GenerateRequest alone = TestRequest();
  alone.mutable_prompts()->DeleteSubrange(1, 2);
  alone.mutable_sampling()->set_seed(1234567);
  std::vector<GenerateResult> want;
  ASSERT_TRUE(Call(alone, &want).ok());
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(std::vector<int32_t>(results[0].tokens().begin(), results[0].tokens().end()),
            std::vector<int32_t>(want[0].tokens().begin(), want[0].tokens().end()));
  EXPECT_EQ(std::vector<float>(results[0].sampling_logprobs().begin(),
                               results[0].sampling_logprobs().end()),
            std::vector<float>(want[0].sampling_logprobs().begin(),
                               want[0].sampling_logprobs().end()));
  const std::vector<GenerationResult> direct = DirectGenerate(model_a_, TestRequest(), 6);
  ExpectEqual(results[1], direct[1], 1);
  ExpectEqual(results[2], direct[2], 2);
}

TEST_F(RolloutServiceTest, GreedyAndThePerModeBudget) {
  GenerateRequest request = TestRequest();
  request.clear_stop_tokens();
  request.mutable_sampling()->set_temperature(0);  // greedy; top_p/top_k ignored
  request.mutable_sampling()->set_top_p(0);
  request.mutable_sampling()->set_max_new_tokens(0);  // the mode's budget
  const std::pair<ReasoningMode, int> budgets[] = {
      {REASONING_MODE_NON_THINK, 4}, {REASONING_MODE_THINK_HIGH, 6}, {REASONING_MODE_THINK_MAX, 8}};
  for (const auto& [mode, budget] : budgets) {
    request.set_mode(mode);
    std::vector<GenerateResult> results;
    ASSERT_TRUE(Call(request, &results).ok());
    const std::vector<GenerationResult> want = DirectGenerate(model_a_, request, budget);
    ASSERT_EQ(results.size(), want.size());
    for (int b = 0; b < static_cast<int>(want.size()); ++b) {
      ExpectEqual(results[b], want[b], b);
      EXPECT_EQ(results[b].tokens_size(), budget);
      EXPECT_EQ(results[b].max_new_tokens(), budget);
    }
  }
  request.mutable_sampling()->set_max_new_tokens(3);  // below the budget: kept
  std::vector<GenerateResult> results;
  ASSERT_TRUE(Call(request, &results).ok());
  EXPECT_EQ(results[0].tokens_size(), 3);
}

TEST_F(RolloutServiceTest, MalformedRequestsAreInvalidArgumentAndServerKeepsServing) {
  struct Case {
    const char* name;
    void (*mutate)(GenerateRequest&);
    const char* message;
  };
  const Case cases[] = {
      {"empty batch", [](GenerateRequest& r) { r.clear_prompts(); }, "prompts: empty batch"},
      {"empty prompt", [](GenerateRequest& r) { r.mutable_prompts(1)->clear_token_ids(); },
       "prompts[1].token_ids: empty prompt"},
      {"token id >= vocab", [](GenerateRequest& r) { r.mutable_prompts(2)->set_token_ids(3, 128); },
       "prompts[2].token_ids[3]: 128 outside [0, vocab_size = 128)"},
      {"negative token id", [](GenerateRequest& r) { r.mutable_prompts(0)->set_token_ids(0, -1); },
       "prompts[0].token_ids[0]: -1"},
      {"prompt beyond the context",
       [](GenerateRequest& r) {
         for (int i = 0; i < 60; ++i) r.mutable_prompts(1)->add_token_ids(1);
       },
       "prompts[1]: prompt beyond the context"},
      {"unset mode", [](GenerateRequest& r) { r.set_mode(REASONING_MODE_UNSPECIFIED); }, "mode:"},
      {"unknown mode", [](GenerateRequest& r) { r.set_mode(static_cast<ReasoningMode>(9)); },
       "mode: must be NON_THINK, THINK_HIGH or THINK_MAX, got 9"},
      {"negative temperature",
       [](GenerateRequest& r) { r.mutable_sampling()->set_temperature(-1); },
       "sampling.temperature"},
      {"top_p 0 when sampling", [](GenerateRequest& r) { r.mutable_sampling()->set_top_p(0); },
       "sampling.top_p"},
      {"top_p > 1", [](GenerateRequest& r) { r.mutable_sampling()->set_top_p(1.5f); },
       "sampling.top_p"},
      {"negative top_k", [](GenerateRequest& r) { r.mutable_sampling()->set_top_k(-2); },
       "sampling.top_k"},
      {"negative max_new_tokens",
       [](GenerateRequest& r) { r.mutable_sampling()->set_max_new_tokens(-1); },
       "sampling.max_new_tokens"},
      {"stop token >= vocab", [](GenerateRequest& r) { r.add_stop_tokens(500); },
       "stop_tokens[1]: 500"},
  };
  std::vector<GenerateResult> results;
  for (const Case& c : cases) {
    GenerateRequest request = TestRequest();
    c.mutate(request);
    const grpc::Status status = Call(request, &results);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(status.error_message(), HasSubstr(c.message)) << c.name;
    EXPECT_TRUE(results.empty()) << c.name;
  }
  ASSERT_TRUE(Call(TestRequest(), &results).ok());
  EXPECT_EQ(results.size(), 3u);
}

TEST_F(RolloutServiceTest, UpdateWeightsChangesTheVersionAndTheOutputs) {
  const GenerateRequest request = TestRequest();
  std::vector<GenerateResult> before;
  ASSERT_TRUE(Call(request, &before).ok());
  const std::string dir = SaveModelB();

  EXPECT_EQ(Update(dir, 1).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Update("", 2).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const grpc::Status missing = Update(dir + "/missing", 2);
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(missing.error_message(), HasSubstr("missing"));
  EXPECT_EQ(service_->version(), 1);

  ASSERT_TRUE(Update(dir, 5).ok());
  EXPECT_EQ(service_->version(), 5);
  EXPECT_EQ(Update(dir, 5).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  std::vector<GenerateResult> after;
  ASSERT_TRUE(Call(request, &after).ok());
  const std::vector<GenerationResult> want = DirectGenerate(model_b_, request, 6);
  ASSERT_EQ(after.size(), want.size());
  bool any_differs = false;
  for (int b = 0; b < static_cast<int>(want.size()); ++b) {
    ExpectEqual(after[b], want[b], b);
    EXPECT_EQ(after[b].weight_version(), 5);
    any_differs |= after[b].model_logprobs(0) != before[b].model_logprobs(0);
  }
  EXPECT_TRUE(any_differs);
}

// Generate calls racing an UpdateWeights each run wholly on one version: all of a call's results
// carry the same version and equal that version's model's direct outputs.
TEST_F(RolloutServiceTest, EachCallRunsOnOneVersionWhileUpdatesRace) {
  const GenerateRequest request = TestRequest();
  const std::vector<GenerationResult> want_a = DirectGenerate(model_a_, request, 6);
  const std::vector<GenerationResult> want_b = DirectGenerate(model_b_, request, 6);
  const std::string dir = SaveModelB();
  constexpr int kCalls = 4;
  std::vector<std::vector<GenerateResult>> results(kCalls);
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] { statuses[i] = Call(request, &results[i]); });
  }
  const grpc::Status updated = Update(dir, 2);
  for (std::thread& thread : threads) thread.join();
  ASSERT_TRUE(updated.ok());
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    ASSERT_EQ(results[i].size(), 3u);
    const int64_t version = results[i][0].weight_version();
    ASSERT_TRUE(version == 1 || version == 2) << version;
    for (int b = 0; b < 3; ++b) {
      EXPECT_EQ(results[i][b].weight_version(), version);
      ExpectEqual(results[i][b], (version == 1 ? want_a : want_b)[b], b);
    }
  }
}

// Concurrent calls with equal options share one rollout::Generate (a long window makes them
// meet); a call with other options runs in a batch of its own; every output is as if alone.
TEST(RolloutServiceBatching, ConcurrentCallsWithEqualOptionsShareABatch) {
  RolloutServiceOptions options = TestOptions();
  options.batch_window_us = 300000;
  const model::Model model = TestModel(1);
  auto service = RolloutServiceImpl::Create(model, 1, options);
  ASSERT_TRUE(service.ok());
  auto running = protos::StartServer({service->get()});
  ASSERT_TRUE(running.ok());
  auto stub = v4rl::RolloutService::NewStub(
      grpc::CreateChannel(running->address(), grpc::InsecureChannelCredentials()));
  constexpr int kCalls = 5;  // the last one greedy
  std::vector<GenerateRequest> requests(kCalls, TestRequest());
  for (int i = 0; i < kCalls; ++i) requests[i].mutable_sampling()->set_seed(100 * i);
  requests[kCalls - 1].mutable_sampling()->set_temperature(0);
  std::vector<std::vector<GenerateResult>> results(kCalls);
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      auto reader = stub->Generate(&context, requests[i]);
      GenerateResult result;
      while (reader->Read(&result)) results[i].push_back(result);
      statuses[i] = reader->Finish();
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    const std::vector<GenerationResult> want = DirectGenerate(model, requests[i], 6);
    ASSERT_EQ(results[i].size(), want.size());
    for (int b = 0; b < static_cast<int>(want.size()); ++b) ExpectEqual(results[i][b], want[b], b);
  }
  // Two batches when every call arrives within the window; one straggler makes three.
  EXPECT_GE((*service)->batches_run(), 2);
  EXPECT_LE((*service)->batches_run(), 3);
  running->server->Shutdown();
}

TEST_F(RolloutServiceTest, HealthCheckReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&context, request, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(RolloutServiceOptionsTest, RejectsBadBudgets) {
  RolloutServiceOptions options = TestOptions();
  options.max_new_tokens_think_max = 0;
  auto service = RolloutServiceImpl::Create(TestModel(1), 1, options);
  ASSERT_FALSE(service.ok());
  EXPECT_THAT(std::string(service.status().message()), HasSubstr("max_new_tokens_think_max"));
}

TEST(RolloutServiceToken, RequiresTheSharedToken) {
  auto service = RolloutServiceImpl::Create(TestModel(1), 1, TestOptions("s3cret"));
  ASSERT_TRUE(service.ok());
  auto running = protos::StartServer({service->get()});
  ASSERT_TRUE(running.ok());
  auto stub = v4rl::RolloutService::NewStub(
      grpc::CreateChannel(running->address(), grpc::InsecureChannelCredentials()));
  const GenerateRequest request = TestRequest();
  GenerateResult result;
  {
    grpc::ClientContext without;
    auto reader = stub->Generate(&without, request);
    EXPECT_FALSE(reader->Read(&result));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext without;
    UpdateWeightsRequest update;
    update.set_checkpoint_dir("/nonexistent");
    update.set_version(2);
    UpdateWeightsResponse response;
    EXPECT_EQ(stub->UpdateWeights(&without, update, &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext with;
    protos::AttachToken(with, "s3cret");
    auto reader = stub->Generate(&with, request);
    int count = 0;
    while (reader->Read(&result)) ++count;
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(count, 3);
  }
  running->server->Shutdown();
}

// ---- StreamWeights ----

// model_b_ as a valid stream: the header, then the data in chunks of `chunk_bytes`.
struct StreamParts {
  WeightChunk header;
  std::vector<WeightChunk> data;
};

StreamParts MakeStream(const model::Model& model, int64_t version, int64_t chunk_bytes) {
  std::vector<core::Tensor> storage;
  const std::vector<core::NamedTensor> named =
      model::HubNamedTensors(model.config, model.weights, &storage);
  StreamParts parts;
  WeightStreamHeader* header = parts.header.mutable_header();
  header->set_version(version);
  header->set_config_json(model::ModelConfigToJson(model.config).dump());
  const absl::StatusOr<std::vector<StreamTensor>> directory = MakeStreamDirectory(named);
  EXPECT_TRUE(directory.ok()) << directory.status();
  for (const StreamTensor& tensor : *directory) {
    WeightStreamHeader::Tensor* out = header->add_tensors();
    out->set_name(tensor.name);
    out->set_dtype(tensor.dtype);
    out->mutable_shape()->Assign(tensor.shape.begin(), tensor.shape.end());
    out->set_num_bytes(tensor.num_bytes);
  }
  EXPECT_TRUE(ForEachWeightChunk(named, chunk_bytes, [&](std::string_view bytes) {
    parts.data.emplace_back().set_data(std::string(bytes));
    return true;
  }));
  return parts;
}

class StreamWeightsTest : public RolloutServiceTest {
 protected:
  // Sends `messages` as one StreamWeights call.
  grpc::Status SendRaw(const std::vector<WeightChunk>& messages) {
    grpc::ClientContext context;
    UpdateWeightsResponse response;
    auto writer = stub_->StreamWeights(&context, &response);
    for (const WeightChunk& message : messages) {
      if (!writer->Write(message)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }
  grpc::Status Send(const StreamParts& parts) {
    std::vector<WeightChunk> messages = {parts.header};
    messages.insert(messages.end(), parts.data.begin(), parts.data.end());
    return SendRaw(messages);
  }
  // The served version is 1 and generates exactly model_a_'s outputs.
  void ExpectStillServesModelA() {
    EXPECT_EQ(service_->version(), 1);
    const GenerateRequest request = TestRequest();
    std::vector<GenerateResult> results;
    ASSERT_TRUE(Call(request, &results).ok());
    const std::vector<GenerationResult> want = DirectGenerate(model_a_, request, 6);
    ASSERT_EQ(results.size(), want.size());
    for (int b = 0; b < static_cast<int>(want.size()); ++b) {
      ExpectEqual(results[b], want[b], b);
      EXPECT_EQ(results[b].weight_version(), 1);
    }
  }
};

TEST_F(StreamWeightsTest, StreamedUpdateGeneratesBitIdenticallyToThePathUpdate) {
  const GenerateRequest request = TestRequest();
  grpc::ClientContext context;
  UpdateWeightsResponse response;
  // Small chunks: tensors split across chunks and chunks spanning tensors; the directory split
  // over the header and several more_tensors messages.
  ASSERT_TRUE(SendWeightStream(stub_.get(), &context, model_b_.config, model_b_.weights, 3, 1000,
                               &response, /*directory_message_bytes=*/300)
                  .ok());
  EXPECT_EQ(response.version(), 3);
  EXPECT_EQ(service_->version(), 3);
  std::vector<GenerateResult> streamed;
  ASSERT_TRUE(Call(request, &streamed).ok());

  ASSERT_TRUE(Update(SaveModelB(), 4).ok());
  std::vector<GenerateResult> from_path;
  ASSERT_TRUE(Call(request, &from_path).ok());
  const std::vector<GenerationResult> want = DirectGenerate(model_b_, request, 6);
  ASSERT_EQ(streamed.size(), want.size());
  ASSERT_EQ(from_path.size(), want.size());
  for (int b = 0; b < static_cast<int>(want.size()); ++b) {
    ExpectEqual(streamed[b], want[b], b);
    EXPECT_EQ(streamed[b].weight_version(), 3);
    from_path[b].set_weight_version(3);
    EXPECT_EQ(streamed[b].SerializeAsString(), from_path[b].SerializeAsString()) << b;
  }
  // The default chunk size (one chunk for the tiny model) works too; versions still increase.
  grpc::ClientContext again;
  EXPECT_EQ(SendWeightStream(stub_.get(), &again, model_b_.config, model_b_.weights, 4,
                             kMaxWeightChunkBytes, &response)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(StreamWeightsTest, MalformedStreamsAreRejectedWithTheFieldAndTheOldVersionServes) {
  const StreamParts valid = MakeStream(model_b_, 2, 4096);
  ASSERT_GE(valid.data.size(), 3u);
  const auto expect = [&](const grpc::Status& status, grpc::StatusCode code,
                          const std::string& field) {
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(field));
  };
  const auto with_header = [&](const std::function<void(WeightStreamHeader*)>& edit) {
    StreamParts parts = valid;
    edit(parts.header.mutable_header());
    return parts;
  };
  std::vector<WeightChunk> all = {valid.header};
  all.insert(all.end(), valid.data.begin(), valid.data.end());

  expect(SendRaw({}), grpc::StatusCode::INVALID_ARGUMENT, "header: empty stream");
  expect(SendRaw({valid.data[0]}), grpc::StatusCode::INVALID_ARGUMENT, "header: the first");
  {
    // Directory entries: the first tensor in a more_tensors message is fine before the data,
    // not as the first message nor after data.
    StreamParts split = valid;
    WeightChunk more;
    *more.mutable_more_tensors()->add_tensors() = split.header.header().tensors(0);
    split.header.mutable_header()->mutable_tensors()->DeleteSubrange(0, 1);
    expect(SendRaw({more}), grpc::StatusCode::INVALID_ARGUMENT, "header: the first");
    std::vector<WeightChunk> late = {split.header, split.data[0], more};
    late.insert(late.end(), split.data.begin() + 1, split.data.end());
    expect(SendRaw(late), grpc::StatusCode::INVALID_ARGUMENT,
           "more_tensors (message 2): directory entries after data");
  }
  expect(Send(with_header([](WeightStreamHeader* h) { h->set_version(1); })),
         grpc::StatusCode::FAILED_PRECONDITION, "header.version: 1");
  expect(Send(with_header([](WeightStreamHeader* h) { h->set_config_json("{"); })),
         grpc::StatusCode::INVALID_ARGUMENT, "header.config_json");
  expect(Send(with_header([&](WeightStreamHeader* h) {
           model::ModelConfig other = model_b_.config;
           other.num_routed_experts *= 2;
           other.num_experts_per_tok = 2;
           h->set_config_json(model::ModelConfigToJson(other).dump());
         })),
         grpc::StatusCode::FAILED_PRECONDITION, "header.config_json: n_routed_experts");
  expect(Send(with_header([](WeightStreamHeader* h) {
           h->mutable_tensors(1)->set_num_bytes(h->tensors(1).num_bytes() - 4);
         })),
         grpc::StatusCode::INVALID_ARGUMENT, "header.tensors[1].num_bytes");
  expect(Send(with_header([](WeightStreamHeader* h) { h->mutable_tensors(0)->set_dtype("F33"); })),
         grpc::StatusCode::INVALID_ARGUMENT, "header.tensors[0].dtype");
  expect(Send(with_header(
             [](WeightStreamHeader* h) { h->mutable_tensors(2)->mutable_shape()->Set(0, -1); })),
         grpc::StatusCode::INVALID_ARGUMENT, "header.tensors[2].shape[0]");
  expect(Send(with_header([](WeightStreamHeader* h) { *h->mutable_tensors(1) = h->tensors(0); })),
         grpc::StatusCode::INVALID_ARGUMENT, "header.tensors[1].name");
  {
    // A tensor missing from the directory (and its bytes from the data): the loader names it.
    StreamParts parts = MakeStream(model_b_, 2, kMaxWeightChunkBytes);
    WeightStreamHeader* h = parts.header.mutable_header();
    const int64_t dropped = h->tensors(h->tensors_size() - 1).num_bytes();
    const std::string name = h->tensors(h->tensors_size() - 1).name();
    h->mutable_tensors()->RemoveLast();
    ASSERT_EQ(parts.data.size(), 1u);
    std::string* data = parts.data[0].mutable_data();
    data->resize(data->size() - dropped);
    expect(Send(parts), grpc::StatusCode::INVALID_ARGUMENT, "missing: " + name);
  }
  {
    // Truncated: the last chunk never arrives.
    std::vector<WeightChunk> truncated(all.begin(), all.end() - 1);
    expect(SendRaw(truncated), grpc::StatusCode::INVALID_ARGUMENT, "data: the stream ended");
  }
  {
    std::vector<WeightChunk> surplus = all;
    surplus.push_back(valid.data[0]);
    expect(SendRaw(surplus), grpc::StatusCode::INVALID_ARGUMENT, "the tensor directory declares");
  }
  {
    std::vector<WeightChunk> oversize = {valid.header};
    oversize.emplace_back().set_data(std::string(kMaxWeightChunkBytes + 1, '\0'));
    expect(SendRaw(oversize), grpc::StatusCode::INVALID_ARGUMENT, "exceeds the limit");
  }
  {
    std::vector<WeightChunk> empty_chunk = {valid.header, WeightChunk()};
    empty_chunk.back().set_data("");
    expect(SendRaw(empty_chunk), grpc::StatusCode::INVALID_ARGUMENT, "data: empty chunk");
  }
  {
    std::vector<WeightChunk> two_headers = all;
    two_headers.insert(two_headers.begin() + 2, valid.header);
    expect(SendRaw(two_headers), grpc::StatusCode::INVALID_ARGUMENT, "a second header");
  }
  ExpectStillServesModelA();
  // And a valid stream still goes through afterwards.
  EXPECT_TRUE(Send(valid).ok());
  EXPECT_EQ(service_->version(), 2);
}

TEST_F(StreamWeightsTest, ClientCancellingMidStreamChangesNothing) {
  const StreamParts valid = MakeStream(model_b_, 2, 4096);
  {
    grpc::ClientContext context;
    UpdateWeightsResponse response;
    auto writer = stub_->StreamWeights(&context, &response);
    ASSERT_TRUE(writer->Write(valid.header));
    ASSERT_TRUE(writer->Write(valid.data[0]));
    context.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ExpectStillServesModelA();
  EXPECT_TRUE(Send(valid).ok());
  EXPECT_EQ(service_->version(), 2);
}

TEST(RolloutServiceStreamToken, StreamWeightsRequiresTheSharedToken) {
  auto service = RolloutServiceImpl::Create(TestModel(1), 1, TestOptions("s3cret"));
  ASSERT_TRUE(service.ok());
  auto running = protos::StartServer({service->get()});
  ASSERT_TRUE(running.ok());
  auto stub = v4rl::RolloutService::NewStub(
      grpc::CreateChannel(running->address(), grpc::InsecureChannelCredentials()));
  const model::Model model_b = TestModel(2);
  UpdateWeightsResponse response;
  grpc::ClientContext without;
  EXPECT_EQ(SendWeightStream(stub.get(), &without, model_b.config, model_b.weights, 2,
                             kMaxWeightChunkBytes, &response)
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext with;
  protos::AttachToken(with, "s3cret");
  EXPECT_TRUE(SendWeightStream(stub.get(), &with, model_b.config, model_b.weights, 2,
                               kMaxWeightChunkBytes, &response)
                  .ok());
  EXPECT_EQ((*service)->version(), 2);
  running->server->Shutdown();
}

}  // namespace
}  // namespace v4rl::rollout
