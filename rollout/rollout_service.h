// The Rollout gRPC service (protos/rollout_service.proto): validates each request before touching
// the model, turns it into rollout::Generate's plain structs, and streams one GenerateResult per
// prompt, tagged with the weight version the whole call ran with. UpdateWeights loads a
// checkpoint directory and swaps it in atomically under a strictly increasing version.
//
// Prompts arrive as token ids already rendered in the mode's chat format (actor/chat_encoding.h
// with thinking_mode kChat for NON_THINK, kThinking with reasoning_effort kHigh / kMax for
// THINK_HIGH / THINK_MAX); the mode here only picks the length budget: a request's
// max_new_tokens of 0 takes its mode's cap, a larger value is clamped to it.
//
// Greedy decoding is temperature == 0 (proto3's unset value); sampling needs temperature > 0,
// top_p in (0, 1], top_k >= 0. Sequence i of a request samples with the stream seed + i.
//
// Ownership: the service owns the served model through a shared_ptr; a Generate call copies that
// pointer when it starts, so an UpdateWeights during it neither blocks on it nor changes its
// outputs, and the old weights are freed when the last call using them ends.
// Thread-safety: gRPC may call both methods concurrently. Generate calls run one after another
// (a mutex serialises them; batching concurrent calls into one rollout::Generate is future
// work). UpdateWeights loads without holding any lock and swaps under a short one.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "model/forward.h"
#include "protos/rollout_service.grpc.pb.h"

namespace v4rl::rollout {

inline constexpr int kMaxPromptsPerRequest = 4096;
inline constexpr int kMaxStopTokens = 1024;

struct RolloutServiceOptions {
  // Per-mode caps on max_new_tokens (the length budget); each >= 1.
  int64_t max_new_tokens_non_think = 256;
  int64_t max_new_tokens_think_high = 1024;
  int64_t max_new_tokens_think_max = 4096;
  // Prompt tokens a sequence feeds per step (rollout::GenerateOptions::prefill_chunk); >= 0.
  int64_t prefill_chunk = 0;
  // Shared secret required from clients ("authorization: Bearer <token>"); empty = none.
  std::string token;
};

class RolloutServiceImpl final : public v4rl::RolloutService::Service {
 public:
  // Serves `initial_model` as weight version `version`. InvalidArgument naming the option when a
  // cap is < 1 or prefill_chunk < 0.
  static absl::StatusOr<std::unique_ptr<RolloutServiceImpl>> Create(model::Model initial_model,
                                                                    int64_t version,
                                                                    RolloutServiceOptions options);

  grpc::Status Generate(grpc::ServerContext* context, const GenerateRequest* request,
                        grpc::ServerWriter<GenerateResult>* writer) override;
  grpc::Status UpdateWeights(grpc::ServerContext* context, const UpdateWeightsRequest* request,
                             UpdateWeightsResponse* response) override;

  // The version now served (calls already running may still use an older one).
  int64_t version() const;

 private:
  struct Snapshot {
    std::shared_ptr<const model::Model> model;
    int64_t version = 0;
  };

  RolloutServiceImpl(model::Model initial_model, int64_t version, RolloutServiceOptions options);
  Snapshot Current() const;

  const RolloutServiceOptions options_;
  mutable std::mutex snapshot_mutex_;  // guards snapshot_
  Snapshot snapshot_;
  std::mutex generate_mutex_;  // serialises Generate calls
};

}  // namespace v4rl::rollout
