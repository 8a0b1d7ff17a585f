// `v4rl run` with rollout and reward in separate processes over gRPC (services SPAWN), against the
// same job in one process, on the tiny char model:
//   - the results are bit-identical: per-step metrics, summary, final weights, and every stored
//     trajectory (tokens, logprobs, kept sets, routing, rewards, versions);
//   - the rollout worker SIGKILLed mid-job: the job says which worker died and what it does,
//     restarts it on the latest weights, retries the lost rollout and ends with the same result
//     and every trajectory (`v4rl store stats` counts them);
//   - `v4rl serve rollout|reward|learner` answer malformed requests with INVALID_ARGUMENT naming
//     the field and keep serving.
// Everything is real: child processes, gRPC over loopback, RocksDB. The SFT stage runs once (in
// the baseline) and its run directory is copied to the other runs, which resume it.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/subprocess.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "protos/learner_service.grpc.pb.h"
#include "protos/reward_service.grpc.pb.h"
#include "protos/rollout_service.grpc.pb.h"
#include "tests/testing/run_command.h"

namespace v4rl {
namespace {

using ::testing::HasSubstr;

constexpr int kSteps = 5, kPrompts = 4, kGroup = 4;
constexpr int kTrajectories = kSteps * kPrompts * kGroup;

std::string Binary() { return std::getenv("V4RL_BINARY"); }
// Per process, so that concurrent runs of this test on one machine do not share directories.
std::string Root() { return absl::StrCat(::testing::TempDir(), "/distributed_run_", getpid()); }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Writes RUN's config; `services` is the text of a services { } section (may be empty).
std::string WriteConfig(const std::string& run_dir, const std::string& services) {
  const std::string source = std::getenv("V4RL_SOURCE_DIR");
  const std::string path = run_dir + ".textproto";
  std::ofstream(path) << "run_dir: \"" << run_dir << "\"\n"
                      << "synthetic { name: \"addition\" min_digits: 1 max_digits: 1 seed: 3 }\n"
                      << "sft { init_config: \"" << source << "/configs/models/tiny_char.json\" "
                      << "steps: 60 batch_size: 16 lr: 3e-3 end_lr: 3e-4 warmup_steps: 5 "
                      << "eval_examples: 8 }\n"
                      << "grpo { steps: " << kSteps << " prompts_per_step: " << kPrompts
                      << " group_size: " << kGroup
                      << " max_new_tokens: 4 eval_examples: 20 kl_coef: 0.01 lr: 3e-4 }\n"
                      << services << "\n";
  return path;
}

// Metrics lines and summary without their timing fields.
struct RunResult {
  std::vector<nlohmann::json> metrics;
  nlohmann::json summary;
  std::string final_weights;           // the last checkpoint's model.safetensors bytes
  std::vector<nlohmann::json> stored;  // `v4rl store dump --tokens --routing`, timestamps removed
  std::string log;
};

void DropTimestamps(nlohmann::json& json) {
  if (json.is_object()) {
    for (const char* key : {"created_us", "updated_us", "finished_us", "elapsed_s"}) json.erase(key);
    for (auto& [key, value] : json.items()) DropTimestamps(value);
  } else if (json.is_array()) {
    for (auto& value : json) DropTimestamps(value);
  }
}

RunResult ReadRun(const std::string& run_dir) {
  RunResult result;
  std::istringstream metrics(ReadAll(run_dir + "/metrics_grpo.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    result.metrics.push_back(nlohmann::json::parse(line));
    DropTimestamps(result.metrics.back());
  }
  result.summary = nlohmann::json::parse(ReadAll(run_dir + "/summary.json"));
  DropTimestamps(result.summary);
  result.final_weights = ReadAll(absl::StrCat(run_dir, "/checkpoints/step-0000000", kSteps,
                                              "/model.safetensors"));
  const testing::CommandResult dump = testing::RunCommand(
      Binary() + " store dump " + run_dir + "/trajectories --tokens --routing");
  EXPECT_EQ(dump.exit_code, 0) << dump.output;
  std::istringstream lines(dump.output);
  for (std::string line; std::getline(lines, line);) {
    result.stored.push_back(nlohmann::json::parse(line));
    DropTimestamps(result.stored.back());
  }
  return result;
}

// Runs the job in `name` with `services`, reusing the baseline's SFT stage when it exists.
RunResult RunJob(const std::string& name, const std::string& services) {
  const std::string run_dir = Root() + "/" + name;
  std::filesystem::remove_all(run_dir);
  std::filesystem::create_directories(run_dir);
  if (name != "in_process") {
    std::filesystem::copy(Root() + "/in_process/sft", run_dir + "/sft",
                          std::filesystem::copy_options::recursive);
  }
  const testing::CommandResult run =
      testing::RunV4rl("run " + WriteConfig(run_dir, services));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  RunResult result = ReadRun(run_dir);
  result.log = run.output;
  return result;
}

const RunResult& Baseline() {
  static const RunResult* baseline = [] {
    std::filesystem::remove_all(Root());
    return new RunResult(RunJob("in_process", ""));
  }();
  return *baseline;
}

void ExpectSameResult(const RunResult& got, const RunResult& want) {
  ASSERT_EQ(got.metrics.size(), want.metrics.size());
  for (size_t i = 0; i < want.metrics.size(); ++i) {
    EXPECT_EQ(got.metrics[i], want.metrics[i]) << "metrics line " << i;
  }
  EXPECT_EQ(got.summary, want.summary);
  EXPECT_FALSE(want.final_weights.empty());
  EXPECT_TRUE(got.final_weights == want.final_weights) << "final weights differ";
  ASSERT_EQ(got.stored.size(), want.stored.size());
  for (size_t i = 0; i < want.stored.size(); ++i) {
    EXPECT_EQ(got.stored[i], want.stored[i]) << "trajectory " << i;
  }
}

int64_t StoreStatsCount(const std::string& store_dir) {
  const testing::CommandResult stats = testing::RunV4rl("store stats " + store_dir);
  EXPECT_EQ(stats.exit_code, 0) << stats.output;
  const size_t at = stats.output.find("trajectories: ");
  int64_t count = -1;
  if (at != std::string::npos) {
    const size_t end = stats.output.find_first_of(",\n", at);
    EXPECT_TRUE(absl::SimpleAtoi(stats.output.substr(at + 14, end - at - 14), &count));
  }
  return count;
}

TEST(DistributedRun, SpawnedWorkersGiveTheInProcessResultBitForBit) {
  const RunResult& baseline = Baseline();
  // The comparison means something only if GRPO learned: some rewards and a non-zero KL.
  double reward_sum = 0;
  for (const auto& r : baseline.summary["mean_reward_per_step"]) reward_sum += r.get<double>();
  EXPECT_GT(reward_sum, 0);
  EXPECT_EQ(baseline.stored.size(), static_cast<size_t>(kTrajectories));

  const RunResult spawned = RunJob("spawn", "services { mode: MODE_SPAWN }");
  EXPECT_THAT(spawned.log, HasSubstr("started rollout worker pid"));
  EXPECT_THAT(spawned.log, HasSubstr("started reward worker pid"));
  ExpectSameResult(spawned, baseline);
  for (const nlohmann::json& metrics : spawned.metrics) {
    if (metrics.contains("max_lag")) {
      EXPECT_EQ(metrics["max_lag"], 0);
    }
  }
  EXPECT_EQ(StoreStatsCount(Root() + "/spawn/trajectories"), kTrajectories);
  // The weights of the last step were published for the worker.
  EXPECT_TRUE(std::filesystem::exists(
      absl::StrCat(Root(), "/spawn/published/version-0000000", kSteps, "/model.safetensors")));
}

// Reads the job's log lines (its stderr, through the pipe) until one contains `text`; appends
// every line to `log`.
bool ReadUntil(core::Subprocess& job, const std::string& text, std::string* log) {
  while (true) {
    absl::StatusOr<std::string> line = job.ReadLine(120);
    if (!line.ok()) return false;
    *log += *line + "\n";
    if (line->find(text) != std::string::npos) return true;
  }
}

TEST(DistributedRun, KilledRolloutWorkerIsRestartedAndTheResultIsUnchanged) {
  const RunResult& baseline = Baseline();
  const std::string run_dir = Root() + "/killed";
  std::filesystem::remove_all(run_dir);
  std::filesystem::create_directories(run_dir);
  std::filesystem::copy(Root() + "/in_process/sft", run_dir + "/sft",
                        std::filesystem::copy_options::recursive);
  // The job's stderr comes through the pipe, so the test reacts to a line as it is written.
  auto started = core::Subprocess::Start(
      {"/bin/sh", "-c",
       "exec " + Binary() + " run " + WriteConfig(run_dir, "services { mode: MODE_SPAWN }") +
           " 2>&1 >/dev/null"});
  ASSERT_TRUE(started.ok()) << started.status();
  core::Subprocess& job = **started;
  std::string log;
  ASSERT_TRUE(ReadUntil(job, "started rollout worker pid ", &log)) << log;
  const std::string marker = "started rollout worker pid ";
  const size_t at = log.find(marker) + marker.size();
  int worker = 0;
  ASSERT_TRUE(absl::SimpleAtoi(log.substr(at, log.find(' ', at) - at), &worker)) << log;
  // Step 2 has published version 2; the job is about to roll out step 3. Freeze it so the kill
  // lands mid-job whatever the timing, kill its rollout worker, let it go on.
  ASSERT_TRUE(ReadUntil(job, "grpo step 2/", &log)) << log;
  job.Signal(SIGSTOP);
  ASSERT_EQ(kill(worker, SIGKILL), 0);
  job.Signal(SIGCONT);
  ReadUntil(job, "no such line: read to the end", &log);
  absl::StatusOr<std::string> ended = job.Wait(180);
  ASSERT_TRUE(ended.ok()) << log;
  EXPECT_EQ(*ended, "exited with status 0") << log;
  // Which worker, how it ended, what the job does about it.
  EXPECT_THAT(log, HasSubstr(absl::StrCat("rollout worker pid ", worker, " at 127.0.0.1:")));
  EXPECT_THAT(log, HasSubstr("killed by signal 9"));
  EXPECT_THAT(log, HasSubstr("starting a new rollout worker"));
  EXPECT_THAT(log, HasSubstr("on weights version 2"));
  EXPECT_THAT(log, HasSubstr("retrying"));
  EXPECT_THAT(log, HasSubstr("rollout worker recovered 1 time"));
  const RunResult result = ReadRun(run_dir);
  ExpectSameResult(result, baseline);
  EXPECT_EQ(StoreStatsCount(run_dir + "/trajectories"), kTrajectories);
  const testing::CommandResult verify =
      testing::RunV4rl("store verify " + run_dir + "/trajectories");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  std::cerr << log;
}

// Workers started by hand (`v4rl serve`), the job in CONNECT mode (so weights are streamed,
// services.weight_transfer's default there): the same result as in process; the rollout worker
// killed mid-job and started again on the same port some time later, on its initial weights: the
// job waits for it, streams it the latest weights, retries, and still ends with the same result.
TEST(DistributedRun, ConnectWaitsForARestartedWorker) {
  const RunResult& baseline = Baseline();
  const std::string initial =
      Root() + "/in_process/sft/checkpoints/" +
      std::string(absl::StripAsciiWhitespace(ReadAll(Root() + "/in_process/sft/checkpoints/latest")));
  const auto serve = [](const std::vector<std::string>& args, int* port) {
    std::vector<std::string> argv = {Binary(), "serve"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto process = core::Subprocess::Start(argv);
    EXPECT_TRUE(process.ok()) << process.status();
    absl::StatusOr<std::string> line = (*process)->ReadLine(60);
    EXPECT_TRUE(line.ok() && absl::SimpleAtoi(*line, port)) << line.status();
    return *std::move(process);
  };
  int rollout_port = 0, reward_port = 0;
  std::unique_ptr<core::Subprocess> rollout =
      serve({"rollout", "--model", initial, "--version", "-1", "--max_new_tokens_non_think", "4"},
            &rollout_port);
  std::unique_ptr<core::Subprocess> reward = serve({"reward"}, &reward_port);
  const std::string run_dir = Root() + "/connect";
  std::filesystem::remove_all(run_dir);
  std::filesystem::create_directories(run_dir);
  std::filesystem::copy(Root() + "/in_process/sft", run_dir + "/sft",
                        std::filesystem::copy_options::recursive);
  const std::string services = absl::StrCat(
      "services { mode: MODE_CONNECT rollout_address: \"127.0.0.1:", rollout_port,
      "\" reward_address: \"127.0.0.1:", reward_port, "\" connect_timeout_s: 60 }");
  auto started = core::Subprocess::Start(
      {"/bin/sh", "-c",
       "exec " + Binary() + " run " + WriteConfig(run_dir, services) + " 2>&1 >/dev/null"});
  ASSERT_TRUE(started.ok()) << started.status();
  core::Subprocess& job = **started;
  std::string log;
  ASSERT_TRUE(ReadUntil(job, "grpo step 2/", &log)) << log;
  job.Signal(SIGSTOP);
  rollout->Signal(SIGKILL);
  EXPECT_THAT(rollout->Wait(30).value_or(""), HasSubstr("killed by signal 9"));
  job.Signal(SIGCONT);
  ASSERT_TRUE(ReadUntil(job, "waiting up to 60 s for the rollout worker at 127.0.0.1:", &log))
      << log;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the job keeps waiting
  int again = 0;
  rollout = serve({"rollout", "--model", initial, "--version", "-1", "--port",
                   std::to_string(rollout_port), "--max_new_tokens_non_think", "4"},
                  &again);
  EXPECT_EQ(again, rollout_port);
  ReadUntil(job, "no such line: read to the end", &log);
  EXPECT_EQ(job.Wait(180).value_or("still running"), "exited with status 0") << log;
  EXPECT_THAT(log, HasSubstr("re-sending weights version 2 to rollout worker at 127.0.0.1:"));
  EXPECT_THAT(log, HasSubstr("by StreamWeights"));
  EXPECT_THAT(log, HasSubstr("is back with weights version 2; retrying"));
  ExpectSameResult(ReadRun(run_dir), baseline);
  EXPECT_EQ(StoreStatsCount(run_dir + "/trajectories"), kTrajectories);
  std::cerr << log;
}

// services.weight_transfer means something only with workers: rejected in process, at
// validation (nothing runs).
TEST(DistributedRun, WeightTransferNeedsSpawnOrConnect) {
  const std::string run_dir = Root() + "/transfer_in_process";
  std::filesystem::remove_all(run_dir);
  std::filesystem::create_directories(Root());
  const testing::CommandResult result = testing::RunV4rl(
      "run " + WriteConfig(run_dir, "services { weight_transfer: WEIGHT_TRANSFER_STREAM }"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_THAT(result.output,
              HasSubstr("services.weight_transfer needs services.mode SPAWN or CONNECT"));
}

// A `v4rl serve SERVICE ...` child and a channel to it.
struct Served {
  std::unique_ptr<core::Subprocess> process;
  std::shared_ptr<grpc::Channel> channel;
};

Served Serve(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {Binary(), "serve"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto process = core::Subprocess::Start(argv);
  EXPECT_TRUE(process.ok()) << process.status();
  Served served{*std::move(process), nullptr};
  absl::StatusOr<std::string> port = served.process->ReadLine(60);
  EXPECT_TRUE(port.ok()) << port.status();
  served.channel = grpc::CreateChannel("127.0.0.1:" + port.value_or("0"),
                                       grpc::InsecureChannelCredentials());
  return served;
}

void ExpectInvalid(const grpc::Status& status, const std::string& field) {
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr(field));
}

TEST(DistributedRun, ServedRolloutRejectsMalformedRequestsAndKeepsServing) {
  Baseline();  // its final checkpoint is the served model
  const std::string model = absl::StrCat(Root(), "/in_process/checkpoints/step-0000000", kSteps);
  Served served = Serve({"rollout", "--model", model, "--version", "3"});
  auto stub = RolloutService::NewStub(served.channel);
  const auto generate = [&](const GenerateRequest& request, int* results) {
    grpc::ClientContext context;
    auto reader = stub->Generate(&context, request);
    GenerateResult result;
    *results = 0;
    while (reader->Read(&result)) ++*results;
    return reader->Finish();
  };
  GenerateRequest valid;
  valid.set_mode(REASONING_MODE_NON_THINK);
  valid.mutable_sampling()->set_temperature(1);
  valid.mutable_sampling()->set_top_p(1);
  valid.mutable_sampling()->set_max_new_tokens(4);
  Prompt* prompt = valid.add_prompts();
  for (auto v : {0, 5, 13, 6, 14}) prompt->mutable_token_ids()->Add(v);
  int results = 0;
  GenerateRequest bad = valid;
  bad.mutable_prompts(0)->set_token_ids(2, 48);  // tiny_char's vocabulary has 48 ids
  ExpectInvalid(generate(bad, &results), "prompts[0].token_ids[2]: 48 outside [0, vocab_size = 48)");
  bad = valid;
  bad.add_prompts();
  ExpectInvalid(generate(bad, &results), "prompts[1].token_ids: empty prompt");
  bad = valid;
  for (int i = 0; i < 4100; ++i) bad.mutable_prompts(0)->add_token_ids(3);
  ExpectInvalid(generate(bad, &results), "prompts[0]: prompt beyond the context");
  bad = valid;
  bad.set_mode(static_cast<ReasoningMode>(7));
  ExpectInvalid(generate(bad, &results), "mode: must be NON_THINK, THINK_HIGH or THINK_MAX, got 7");
  ASSERT_TRUE(generate(valid, &results).ok());
  EXPECT_EQ(results, 1);
  served.process->Signal(SIGTERM);
  EXPECT_EQ(served.process->Wait(30).value_or(""), "exited with status 0");
}

TEST(DistributedRun, ServedRewardRejectsMalformedRequestsAndKeepsServing) {
  Served served = Serve({"reward"});
  auto stub = RewardService::NewStub(served.channel);
  const auto score = [&](const ScoreRequest& request, ScoreResponse* response) {
    grpc::ClientContext context;
    return stub->Score(&context, request, response);
  };
  ScoreRequest valid;
  ScoreItem* item = valid.add_items();
  item->set_completion("12<eos>");
  item->set_mode(REASONING_MODE_NON_THINK);
  item->mutable_verifier()->set_kind(VerifierSpec::ANSWER_KIND_VERBATIM);
  item->mutable_verifier()->set_expected("12<eos>");
  ScoreResponse response;
  ExpectInvalid(score(ScoreRequest(), &response), "items: empty batch");
  ScoreRequest bad = valid;
  bad.mutable_items(0)->set_mode(REASONING_MODE_UNSPECIFIED);
  ExpectInvalid(score(bad, &response), "items[0].mode");
  bad = valid;
  bad.mutable_items(0)->mutable_verifier()->set_kind(VerifierSpec::ANSWER_KIND_INTEGER);
  bad.mutable_items(0)->mutable_verifier()->set_expected("twelve");
  ExpectInvalid(score(bad, &response), "items[0]: verifier: expected must be an integer");
  bad = valid;
  bad.mutable_items(0)->mutable_verifier()->set_kind(static_cast<VerifierSpec::AnswerKind>(9));
  ExpectInvalid(score(bad, &response), "items[0].verifier.kind: unknown kind 9");
  ASSERT_TRUE(score(valid, &response).ok());
  ASSERT_EQ(response.verdicts_size(), 1);
  EXPECT_EQ(response.verdicts(0).reward(), 1.0);
}

TEST(DistributedRun, ServedLearnerRejectsMalformedSubmissionsAndKeepsServing) {
  const std::string store_dir = Root() + "/learner_store";
  std::filesystem::remove_all(store_dir);
  std::filesystem::create_directories(Root());
  Served served = Serve({"learner", "--store", store_dir, "--version", "2"});
  auto stub = LearnerService::NewStub(served.channel);
  const auto submit = [&](const SubmitTrajectoriesRequest& request,
                          SubmitTrajectoriesResponse* response) {
    grpc::ClientContext context;
    return stub->SubmitTrajectories(&context, request, response);
  };
  SubmitTrajectoriesRequest valid;
  Trajectory* t = valid.add_trajectories();
  TrajectoryHeader* header = t->mutable_meta()->mutable_header();
  header->set_job_id("external");
  header->set_policy_version(2);
  header->set_mode(REASONING_MODE_NON_THINK);
  header->mutable_sampling()->set_temperature(1);
  header->mutable_sampling()->set_top_p(1);
  t->mutable_meta()->set_status(TRAJECTORY_STATUS_COMPLETE);
  Reward* reward = t->mutable_meta()->add_rewards();
  reward->set_source(REWARD_SOURCE_VERIFIER);
  reward->set_source_id("exact_match");
  reward->set_value(1);
  for (auto v : {0, 5, 13}) t->mutable_prompt_token_ids()->Add(v);
  for (auto v : {8, 1}) t->mutable_completion()->mutable_token_ids()->Add(v);
  for (auto v : {-0.5f, -0.1f}) t->mutable_completion()->mutable_logprobs()->Add(v);
  for (auto v : {2, 2}) t->mutable_completion()->mutable_weight_versions()->Add(v);
  for (auto v : {48, 48}) t->mutable_completion()->mutable_kept_set_sizes()->Add(v);
  SubmitTrajectoriesResponse response;
  ExpectInvalid(submit(SubmitTrajectoriesRequest(), &response), "empty request");
  SubmitTrajectoriesRequest bad = valid;
  bad.mutable_trajectories(0)->clear_prompt_token_ids();
  ExpectInvalid(submit(bad, &response), "trajectories[0]");
  bad = valid;
  bad.mutable_trajectories(0)->mutable_completion()->mutable_logprobs()->RemoveLast();
  ExpectInvalid(submit(bad, &response), "trajectories[0].completion");
  bad = valid;
  bad.mutable_trajectories(0)->mutable_meta()->clear_rewards();
  ExpectInvalid(submit(bad, &response), "trajectories[0].meta.rewards");
  bad = valid;
  bad.mutable_trajectories(0)->mutable_meta()->set_status(TRAJECTORY_STATUS_IN_PROGRESS);
  ExpectInvalid(submit(bad, &response), "trajectories[0].meta.status");
  bad = valid;
  bad.mutable_trajectories(0)->mutable_meta()->mutable_header()->set_mode(REASONING_MODE_UNSPECIFIED);
  ExpectInvalid(submit(bad, &response), "trajectories[0].meta.header.mode");
  SubmitTrajectoriesRequest unknown_id;
  unknown_id.add_trajectory_ids(12345);
  {
    grpc::ClientContext context;
    const grpc::Status status = stub->SubmitTrajectories(&context, unknown_id, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("trajectory_ids[0]"));
  }
  ASSERT_TRUE(submit(valid, &response).ok());
  ASSERT_EQ(response.trajectory_ids_size(), 1);
  EXPECT_EQ(response.queued(), 1);
  // The id now in the store can be submitted by id.
  SubmitTrajectoriesRequest by_id;
  by_id.add_trajectory_ids(response.trajectory_ids(0));
  ASSERT_TRUE(submit(by_id, &response).ok());
  EXPECT_EQ(response.queued(), 2);

  const auto wait = [&](int64_t version, int64_t timeout_ms, WaitForWeightVersionResponse* out) {
    grpc::ClientContext context;
    WaitForWeightVersionRequest request;
    request.set_version(version);
    request.set_timeout_ms(timeout_ms);
    return stub->WaitForWeightVersion(&context, request, out);
  };
  WaitForWeightVersionResponse version;
  ExpectInvalid(wait(-1, 0, &version), "version: -1");
  ExpectInvalid(wait(1, -5, &version), "timeout_ms: -5");
  ASSERT_TRUE(wait(2, 100, &version).ok());
  EXPECT_EQ(version.version(), 2);
  const grpc::Status late = wait(3, 200, &version);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(late.error_message(), HasSubstr("the newest is 2"));
  served.process->Signal(SIGTERM);
  EXPECT_EQ(served.process->Wait(30).value_or(""), "exited with status 0");
  EXPECT_EQ(StoreStatsCount(store_dir), 1);
}

}  // namespace
}  // namespace v4rl
