// The trajectory as domain code sees it: one sampled completion of one prompt, with what the
// learner needs to replay the behaviour policy (token ids, rollout log-probs, the weight version of
// every token, kept-set sizes for Keep Sampling Mask, routed experts for Keep Routing), plus its
// rewards and status. Plain structs; the wire/disk schema is protos/trajectory.proto.
//
// Validation shared by every TrajectoryStore implementation lives here too, so that both stores
// reject the same inputs with the same messages.
// Thread-safety: values; the free functions are pure.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace v4rl::store {

// Assigned by the store; unique within a store for its whole life (never reused after a delete).
using TrajectoryId = uint64_t;

enum class ReasoningMode : int { kNonThink = 0, kThinkHigh = 1, kThinkMax = 2 };

enum class TrajectoryStatus : int {
  kInProgress = 0,  // the generator may still append tokens
  kComplete = 1,    // ended with an end-of-sequence token
  kTruncated = 2,   // hit its length budget
  kAborted = 3,     // abandoned; never trained on
};

enum class RewardSource : int {
  kVerifier = 0,  // a rule verifier
  kGrm = 1,       // the generative reward model judging with a rubric
};

// "non_think", "think_high", "think_max"; "in_progress", "complete", ...; "verifier", "grm".
std::string_view ReasoningModeName(ReasoningMode mode);
std::string_view TrajectoryStatusName(TrajectoryStatus status);
std::string_view RewardSourceName(RewardSource source);

inline bool IsTerminal(TrajectoryStatus status) { return status != TrajectoryStatus::kInProgress; }

struct SamplingParams {
  float temperature = 1.0f;    // > 0
  float top_p = 1.0f;          // in (0, 1]; 1 = off
  int32_t top_k = 0;           // >= 0; 0 = off
  int32_t max_new_tokens = 0;  // the sample's length budget; 0 = unlimited
  uint64_t seed = 0;           // sampler seed; a resumed sample continues this stream
};

// Shape of the routed-expert record: per completion token, `num_topk` expert ids for each of the
// `num_moe_layers` learned-routing MoE layers (hash-routed layers are deterministic and skipped).
// All zero: routing is not recorded.
struct RoutingShape {
  int32_t num_moe_layers = 0;
  int32_t num_topk = 0;
  int32_t num_experts = 0;  // every id < num_experts <= 65536

  bool enabled() const { return num_moe_layers > 0; }
  int64_t ids_per_token() const { return int64_t{num_moe_layers} * num_topk; }
  // Stored bytes per id: 1 up to 256 experts, else 2.
  int bytes_per_id() const { return num_experts <= 256 ? 1 : 2; }
  friend bool operator==(const RoutingShape&, const RoutingShape&) = default;
};

struct Reward {
  RewardSource source = RewardSource::kVerifier;
  std::string source_id;   // verifier name (kVerifier) or rubric id (kGrm); non-empty
  float value = 0.0f;      // finite
  int64_t created_us = 0;  // unix microseconds; set by the store
};

// Per-token arrays of completion tokens: one append, or a whole completion. Every array has
// num_tokens() entries except routed_experts.
struct CompletionTokens {
  std::vector<int32_t> token_ids;        // [num_tokens] sampled ids, >= 0
  std::vector<float> logprobs;           // [num_tokens] rollout log-prob of each token, finite
  std::vector<int64_t> weight_versions;  // [num_tokens] non-decreasing, >= policy_version
  std::vector<int32_t> kept_set_sizes;   // [num_tokens] tokens kept by top-p/top-k, >= 1
  // [num_moe_layers, num_tokens, num_topk] expert ids, layer-major so the training forward reads
  // one layer's topk_idx contiguously; empty when the trajectory does not record routing.
  std::vector<uint16_t> routed_experts;

  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
};

// Fixed when the trajectory begins.
struct TrajectoryHeader {
  std::string job_id;          // 1..256 bytes, no NUL
  uint64_t group_id = 0;       // samples of one prompt share a group (GRPO); unique within the job
  std::string teacher_id;      // OPD teacher, <= 256 bytes, no NUL; empty when none
  int64_t policy_version = 0;  // weight version generation started with, >= 0
  ReasoningMode mode = ReasoningMode::kNonThink;
  SamplingParams sampling;
  RoutingShape routing;
};

// The small per-trajectory record: what planning scans read.
struct TrajectoryMeta {
  TrajectoryId id = 0;
  TrajectoryHeader header;
  TrajectoryStatus status = TrajectoryStatus::kInProgress;
  int64_t num_prompt_tokens = 0;
  int64_t num_completion_tokens = 0;
  int64_t num_chunks = 0;  // successful appends so far
  int64_t max_weight_version =
      0;  // newest version among completion tokens (policy_version if none)
  std::vector<Reward> rewards;
  int64_t created_us = 0;  // unix microseconds
  int64_t updated_us = 0;
  int64_t finished_us = 0;  // 0 while in progress
};

struct Trajectory {
  TrajectoryMeta meta;
  std::vector<int32_t> prompt_token_ids;  // [num_prompt_tokens], including any mode preamble
  CompletionTokens completion;            // routed_experts empty when read without routing
};

// Bounds on what one trajectory may hold; they also bound every decoder's allocations.
inline constexpr int64_t kMaxPromptTokens = int64_t{1} << 21;
inline constexpr int64_t kMaxCompletionTokens = int64_t{1} << 21;
inline constexpr int64_t kMaxIdBytes = 256;
inline constexpr int32_t kMaxMoeLayers = 256;
inline constexpr int32_t kMaxTopk = 64;
inline constexpr int32_t kMaxExperts = 65536;

// InvalidArgument naming the field: ids empty/too long/with NUL, negative policy version, unknown
// mode, sampling out of range, inconsistent routing shape.
absl::Status ValidateHeader(const TrajectoryHeader& header);

// ValidateHeader, plus InvalidArgument for an empty or oversized prompt or negative token ids.
absl::Status ValidateBegin(const TrajectoryHeader& header, absl::Span<const int32_t> prompt);

// Checks an append of `chunk` at completion offset `first_token` to `meta`.
// FailedPrecondition: the trajectory is not in progress, or `first_token` is not where the stored
// completion ends (a retried or stale append; read the trajectory to resume).
// InvalidArgument: empty chunk, arrays of different lengths, routing of the wrong size or with ids
// >= num_experts, token ids < 0, non-finite log-probs, kept-set sizes < 1, weight versions that
// decrease or precede the newest stored one, or a completion over kMaxCompletionTokens.
absl::Status ValidateAppend(const TrajectoryMeta& meta, int64_t first_token,
                            const CompletionTokens& chunk);

// FailedPrecondition when the trajectory is not in progress; InvalidArgument when `status` is not
// terminal.
absl::Status ValidateFinish(const TrajectoryMeta& meta, TrajectoryStatus status);

// FailedPrecondition while the trajectory is in progress (rewards judge finished samples);
// InvalidArgument for an empty or oversized source_id or a non-finite value.
absl::Status ValidateReward(const TrajectoryMeta& meta, const Reward& reward);

// The state after a validated append: counts, max version and chunk count advance.
void ApplyAppend(const CompletionTokens& chunk, int64_t now_us, TrajectoryMeta* meta);

// Joins validated appends, in order, into one completion; routing is re-laid out as
// [num_moe_layers, total tokens, num_topk], or left empty when `with_routing` is false.
CompletionTokens ConcatenateChunks(absl::Span<const CompletionTokens> chunks,
                                   const RoutingShape& routing, bool with_routing);

// Learner batch order: by teacher id (so one teacher head stays resident), then by id.
void SortForLearner(std::vector<Trajectory>* batch);

// Current time in unix microseconds.
int64_t NowMicros();

}  // namespace v4rl::store
