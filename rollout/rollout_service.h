// The Rollout gRPC service (protos/rollout_service.proto): validates each request before touching
// the model, turns it into rollout::Generate's plain structs, and streams one GenerateResult per
// prompt, tagged with the weight version the whole call ran with. UpdateWeights loads a
// checkpoint directory and swaps it in atomically under a strictly increasing version;
// StreamWeights does the same with the weights sent in the call (a header, then raw bytes;
// rollout/weight_stream.h assembles them, model::LoadWeights reads them as from a directory), for
// a client whose files this host cannot read. SendWeightStream is that call's client side.
//
// Prompts arrive as token ids already rendered in the mode's chat format (actor/chat_encoding.h
// with thinking_mode kChat for NON_THINK, kThinking with reasoning_effort kHigh / kMax for
// THINK_HIGH / THINK_MAX); the mode here only picks the length budget: a request's
// max_new_tokens of 0 takes its mode's cap, a larger value is clamped to it.
//
// Greedy decoding is temperature == 0 (proto3's unset value); sampling needs temperature > 0,
// top_p in (0, 1], top_k >= 0. prompts[i] samples with its own seed when it sets one, else with
// sampling.seed + i.
//
// Ownership: the service owns the served model through a shared_ptr; a Generate call copies that
// pointer when it starts, so an UpdateWeights during it neither blocks on it nor changes its
// outputs, and the old weights are freed when the last call using them ends.
// Batching: one rollout::Generate runs at a time. A call waits batch_window_us for others to
// arrive, then the oldest waiting call runs together with every waiting call that has the same
// weights and the same generation options (budget, sampling parameters, stop tokens), up to
// kMaxPromptsPerRequest sequences in all; results are the same as alone, since a sequence's
// tokens depend only on its prompt and seed. Calls with other options run in a later batch.
// (Continuous batching inside the engine, where sequences join and leave a running decode, is
// future work.)
// Thread-safety: gRPC may call every method concurrently. UpdateWeights loads without holding any
// lock and swaps under a short one.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/forward.h"
#include "protos/rollout_service.grpc.pb.h"
#include "rollout/generate.h"

namespace v4rl::rollout {

inline constexpr int kMaxPromptsPerRequest = 4096;
inline constexpr int kMaxStopTokens = 1024;

struct RolloutServiceOptions {
  // Per-mode caps on max_new_tokens (the length budget); each >= 1.
  int64_t max_new_tokens_non_think = 256;
  int64_t max_new_tokens_think_high = 1024;
  int64_t max_new_tokens_think_max = 4096;
  // How long a call waits for others to batch with; >= 0. Adds that much latency to a lone call.
  int64_t batch_window_us = 2000;
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
  // The streamed update. Memory: the assembled bytes plus the loaded f32 weights, until the swap.
  grpc::Status StreamWeights(grpc::ServerContext* context, grpc::ServerReader<WeightChunk>* reader,
                             UpdateWeightsResponse* response) override;

  // The version now served (calls already running may still use an older one).
  int64_t version() const;
  // Weight versions installed by StreamWeights so far.
  int64_t streamed_updates() const { return streamed_updates_.load(); }
  // rollout::Generate calls run so far (fewer than Generate RPCs when calls were batched).
  int64_t batches_run() const;

 private:
  struct Snapshot {
    std::shared_ptr<const model::Model> model;
    int64_t version = 0;
  };

  RolloutServiceImpl(model::Model initial_model, int64_t version, RolloutServiceOptions options);
  struct PendingCall;

  Snapshot Current() const;
  // Serves `model` as `version` from now on, unless a concurrent update got there first
  // (FAILED_PRECONDITION naming the version).
  grpc::Status SwapIn(model::Model model, int64_t version);
  // Queues the call and returns its results, running it in a batch with others (see above).
  absl::StatusOr<std::vector<GenerationResult>> GenerateBatched(
      const std::shared_ptr<const model::Model>& model,
      const std::vector<GenerationRequest>& requests, const GenerateOptions& options);

  const RolloutServiceOptions options_;
  std::atomic<int64_t> streamed_updates_{0};
  mutable std::mutex snapshot_mutex_;  // guards snapshot_
  Snapshot snapshot_;
  mutable std::mutex queue_mutex_;    // guards the members below
  std::condition_variable queue_cv_;  // signalled when a batch finishes
  std::deque<PendingCall*> queue_;    // waiting calls, oldest first
  bool batch_running_ = false;
  int64_t batches_run_ = 0;
};

// StreamWeights' client side: sends `config` and `weights` (hub naming, model/save.h) as weight
// version `version` in chunks of `chunk_bytes` (clamped to [1, kMaxWeightChunkBytes]) and returns
// the call's status; `context` carries the token and deadline. The tensor directory fills the
// header up to about `directory_message_bytes`, the rest goes in more_tensors messages of that
// size (tests make it small).
inline constexpr int64_t kDirectoryMessageBytes = 1 << 20;
grpc::Status SendWeightStream(v4rl::RolloutService::StubInterface* stub,
                              grpc::ClientContext* context, const model::ModelConfig& config,
                              const model::ModelWeights& weights, int64_t version,
                              int64_t chunk_bytes, UpdateWeightsResponse* response,
                              int64_t directory_message_bytes = kDirectoryMessageBytes);

}  // namespace v4rl::rollout
