// How a learner job reaches its rollout and reward workers: two plain C++ interfaces, so the GRPO
// job (learner/grpo_job.h) runs the same code whether generation and scoring happen in this
// process or in `v4rl serve rollout` / `v4rl serve reward` processes over gRPC
// (learner/remote_service.h holds those adapters; this header includes no gRPC or protobuf).
//
//   RolloutBackend   PublishWeights(model, version): later Generate calls sample with these
//                    weights and report `version`; Generate(requests, options): one result per
//                    request, each tagged with the weight version it was generated with.
//   RewardBackend    Score(items): one reward per (completion, expected completion) pair.
//
// The in-process implementations are the job's original inline code: InProcessRollout calls
// rollout::Generate on the published model, ExactMatchReward gives 1 when the completion's tokens
// equal the expected ones and 0 otherwise. A remote backend must return bit-identical values for
// the same weights and seeds (sampling streams are per request, see rollout/generate.h).
//
// Ownership: InProcessRollout keeps a pointer to the published model (not a copy); the caller
// keeps it alive and unchanged while Generate runs. Thread-safety: a backend is used by one job
// thread at a time; implementations need not be thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/forward.h"
#include "rollout/generate.h"

namespace v4rl::learner {

// One generated completion and the weight version that generated every one of its tokens.
struct RolloutResult {
  rollout::GenerationResult generation;
  int64_t weight_version = -1;
};

class RolloutBackend {
 public:
  virtual ~RolloutBackend() = default;

  // Makes `model` weight version `version` (> every version published before) the one later
  // Generate calls use. Errors: the backend's (a remote one: writing the checkpoint, the worker's
  // UpdateWeights).
  virtual absl::Status PublishWeights(const model::Model& model, int64_t version) = 0;

  // results[b] belongs to requests[b]. FailedPrecondition before the first PublishWeights; the
  // errors of rollout::Generate (or of the remote worker, which validates the same way).
  virtual absl::StatusOr<std::vector<RolloutResult>> Generate(
      absl::Span<const rollout::GenerationRequest> requests,
      const rollout::GenerateOptions& options) = 0;

  // "in-process rollout", "rollout worker pid 123 at 127.0.0.1:4567", ... for messages.
  virtual std::string Describe() const = 0;
};

// rollout::Generate on the last published model, in this process.
class InProcessRollout final : public RolloutBackend {
 public:
  absl::Status PublishWeights(const model::Model& model, int64_t version) override;
  absl::StatusOr<std::vector<RolloutResult>> Generate(
      absl::Span<const rollout::GenerationRequest> requests,
      const rollout::GenerateOptions& options) override;
  std::string Describe() const override { return "in-process rollout"; }

 private:
  const model::Model* model_ = nullptr;  // not owned
  int64_t version_ = -1;
};

// A completion to score against the task's expected completion (both token ids, EOS included
// where the sample has one).
struct RewardItem {
  std::vector<int32_t> completion;
  std::vector<int32_t> expected;
};

class RewardBackend {
 public:
  virtual ~RewardBackend() = default;
  // rewards[i] belongs to items[i]. Errors: the backend's (a remote one: the worker's status).
  virtual absl::StatusOr<std::vector<double>> Score(absl::Span<const RewardItem> items) = 0;
  virtual std::string Describe() const = 0;
};

// 1 when completion == expected token for token, else 0.
class ExactMatchReward final : public RewardBackend {
 public:
  absl::StatusOr<std::vector<double>> Score(absl::Span<const RewardItem> items) override;
  std::string Describe() const override { return "in-process exact-match reward"; }
};

}  // namespace v4rl::learner
