// gRPC adapters of learner/rollout_client.h: the GRPO job's rollout and reward calls sent to
// `v4rl serve rollout` and `v4rl serve reward` workers (protos/rollout_service.proto,
// protos/reward_service.proto). The job code stays free of gRPC; only this file pair and cli/
// see the generated stubs.
//
// RemoteRollout
//   PublishWeights(model, v)  writes the model directory PUBLISH_ROOT/version-0000000v
//                             (model/save.h; only the newest three are kept) and hands version v
//                             to the worker: WeightTransfer::kPath calls UpdateWeights(dir, v)
//                             (the worker reads the directory: same host or shared storage);
//                             kStream sends the weights in a StreamWeights call (a worker on
//                             another host). The first publication starts the worker through its
//                             supervisor (SPAWN: a child process started on those weights;
//                             CONNECT: waits for the address to answer).
//   Generate(requests, opts)  one Generate RPC per kMaxPromptsPerRequest requests, in NON_THINK
//                             mode, each prompt with its own seed; every result is checked (count,
//                             budget) and converted back, routing unpacked to i32.
// Failure handling: a call that fails in transport (the worker died, was killed, or is
// unreachable: UNAVAILABLE, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, ABORTED) is reported on
// stderr (which worker, what failed, what happens next), the supervisor brings a worker back
// (restart or wait), the latest weights are re-published to it the same way (kStream streams
// the latest published directory, read back from disk), and the call is retried, up to
// max_attempts times. A request the worker rejects (INVALID_ARGUMENT, ...) is returned as is.
//
// Ownership: the adapters own their channels; the supervisor is not owned and outlives them.
// Thread-safety: one caller at a time (the job's thread).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/rollout_client.h"
#include "protos/reward_service.grpc.pb.h"
#include "protos/rollout_service.grpc.pb.h"

namespace v4rl::learner {

// Keeps a worker reachable: started, restarted or waited for. Implementations: cli/ (a child
// process, or a fixed address) and tests.
class WorkerSupervisor {
 public:
  virtual ~WorkerSupervisor() = default;
  // Where the worker listens now, "127.0.0.1:PORT"; empty before the first Recover.
  virtual std::string address() const = 0;
  // "rollout worker pid 123 at 127.0.0.1:4567", for messages.
  virtual std::string Describe() const = 0;
  // Makes a worker answer at address(): SPAWN reaps a dead child and starts a new one (a rollout
  // worker on `checkpoint_dir` as weight version `version`; the reward worker ignores both);
  // CONNECT waits, up to its timeout, for the address to answer health checks. Returns whether
  // the worker is known to serve `version` already (a spawned one does). Unavailable when no
  // worker comes back.
  virtual absl::StatusOr<bool> Recover(const std::string& checkpoint_dir, int64_t version) = 0;
};

// How PublishWeights hands weights to the rollout worker.
enum class WeightTransfer {
  kPath,    // UpdateWeights with the published directory's path
  kStream,  // StreamWeights with the weights' bytes
};

struct RemoteOptions {
  std::string token;      // shared secret sent as "authorization: Bearer <token>"; empty = none
  WeightTransfer weight_transfer = WeightTransfer::kPath;
  // kStream: data bytes per chunk, at most rollout::kMaxWeightChunkBytes.
  int64_t stream_chunk_bytes = 1 << 20;
  int max_attempts = 3;   // tries per call, recoveries included; >= 1
  double call_timeout_s = 600;  // deadline of one RPC
};

class RemoteRollout final : public RolloutBackend {
 public:
  // `publish_root`: directory for the published model directories (created if missing).
  RemoteRollout(WorkerSupervisor* supervisor, std::string publish_root, RemoteOptions options);

  absl::Status PublishWeights(const model::Model& model, int64_t version) override;
  absl::StatusOr<std::vector<RolloutResult>> Generate(
      absl::Span<const rollout::GenerationRequest> requests,
      const rollout::GenerateOptions& options) override;
  std::string Describe() const override { return supervisor_->Describe(); }

  // Recoveries (restarts or waits) so far.
  int64_t recoveries() const { return recoveries_; }

 private:
  // Brings the worker back after `failure` (or starts it: `failure` OK) and re-publishes the
  // latest weights to it (`latest`, or read back from published_dir_ when null).
  absl::Status Recover(const std::string& what, const grpc::Status& failure,
                       const model::Model* latest = nullptr);
  // Hands `version` (`model`, published in `dir`) to the worker by the configured transfer;
  // kStream with model == nullptr reads `dir` back first.
  grpc::Status UpdateWeights(const std::string& dir, const model::Model* model, int64_t version);
  grpc::Status GenerateOnce(const GenerateRequest& request, std::vector<GenerateResult>* results);
  void Connect();

  WorkerSupervisor* supervisor_;
  const std::string publish_root_;
  const RemoteOptions options_;
  std::unique_ptr<v4rl::RolloutService::Stub> stub_;  // null until the worker is started
  std::string published_dir_;  // the latest published weights
  int64_t published_version_ = -1;
  int64_t recoveries_ = 0;
};

class RemoteReward final : public RewardBackend {
 public:
  explicit RemoteReward(WorkerSupervisor* supervisor, RemoteOptions options);

  // Sends each pair as text (learner/synthetic_tasks.h DecodeChars, injective over the char
  // vocabulary) with a verbatim verifier (1 when equal, else 0): ExactMatchReward's values.
  absl::StatusOr<std::vector<double>> Score(absl::Span<const RewardItem> items) override;
  std::string Describe() const override { return supervisor_->Describe(); }
  int64_t recoveries() const { return recoveries_; }

 private:
  WorkerSupervisor* supervisor_;
  const RemoteOptions options_;
  std::unique_ptr<v4rl::RewardService::Stub> stub_;
  int64_t recoveries_ = 0;
};

// Whether a failed call's status means the worker is gone or unreachable (worth a recovery and a
// retry) rather than a rejected request.
bool IsTransportFailure(const grpc::Status& status);

}  // namespace v4rl::learner
