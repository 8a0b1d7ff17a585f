// TrajectoryStore: where every sample the system generates lives, from its first token to the
// learner batch that consumes it (DESIGN.md §1).
//
// Life of a trajectory:
//   id = Begin(header, prompt)                 status in_progress
//   AppendTokens(id, first_token, chunk) ...   a token-level write-ahead log: once an append
//                                              returns OK it survives a crash (with sync on), so a
//                                              preempted generator reads the trajectory back and
//                                              continues the same sample at num_completion_tokens
//   AppendTokensBatch({{id, first, &chunk}, ...})   the same for many samples in one write: what a
//                                              generator does after each decode step
//   Finish(id, complete|truncated|aborted)
//   AddReward(id, reward) ...                  verifier and GRM scores
//   Scan(query) -> metadata; ReadBatch(ids) -> learner batch sorted by teacher
//   DeleteOlderThan(version); Compact()
//
// Every operation is atomic: readers see an append (or a batch of them) whole or not at all, and
// a trajectory never reads as finished with a partial completion.
// Implementations: MemoryTrajectoryStore (tests, single process) and RocksDbTrajectoryStore.
// Thread-safety: every method may be called concurrently from any number of threads; appends to
// different trajectories proceed in parallel, appends to one trajectory are serialised and
// checked against `first_token`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "store/trajectory.h"

namespace v4rl::store {

// One append of AppendTokensBatch.
struct TokenAppend {
  TrajectoryId id = 0;
  int64_t first_token = 0;
  const CompletionTokens* chunk = nullptr;  // not owned; must outlive the call
};

// Selects trajectories by metadata. Results are in increasing id order.
struct ScanQuery {
  std::string job_id;                      // empty: every job
  std::optional<uint64_t> group_id;        // needs job_id
  int64_t min_policy_version = INT64_MIN;  // inclusive, on header.policy_version
  int64_t max_policy_version = INT64_MAX;  // inclusive
  std::vector<TrajectoryStatus> statuses;  // empty: any status
  TrajectoryId after_id = 0;               // only ids > after_id (paging: pass the last id seen)
  int64_t limit = 0;                       // at most this many results; 0 = no limit
};

struct ReadOptions {
  // Routed experts are the bulk of a trajectory (~1 MB per 4K tokens for V4-Flash); learners
  // without Keep Routing skip them.
  bool with_routing = true;
};

class TrajectoryStore {
 public:
  virtual ~TrajectoryStore() = default;

  // Starts an in-progress trajectory. InvalidArgument as ValidateBegin.
  virtual absl::StatusOr<TrajectoryId> Begin(const TrajectoryHeader& header,
                                             absl::Span<const int32_t> prompt_token_ids) = 0;

  // Appends completion tokens [first_token, first_token + chunk.num_tokens()). OK means durable
  // (as the store's sync option promises). NotFound for an unknown id; FailedPrecondition and
  // InvalidArgument as ValidateAppend, in which case nothing is written.
  virtual absl::Status AppendTokens(TrajectoryId id, int64_t first_token,
                                    const CompletionTokens& chunk) = 0;

  // Appends to several trajectories at once: all are written in one atomic write (one fsync with
  // sync on), or none is. Errors as AppendTokens, with "appends[i]: " naming the failing append;
  // InvalidArgument for a null chunk or an id that appears twice.
  virtual absl::Status AppendTokensBatch(absl::Span<const TokenAppend> appends) = 0;

  // Moves an in-progress trajectory to a terminal status. NotFound; errors as ValidateFinish.
  virtual absl::Status Finish(TrajectoryId id, TrajectoryStatus status) = 0;

  // Attaches a reward to a finished trajectory; the store sets created_us. NotFound; errors as
  // ValidateReward.
  virtual absl::Status AddReward(TrajectoryId id, const Reward& reward) = 0;

  // NotFound for an unknown (or deleted) id; DataLoss when stored records are inconsistent.
  virtual absl::StatusOr<TrajectoryMeta> GetMeta(TrajectoryId id) = 0;
  virtual absl::StatusOr<Trajectory> Read(TrajectoryId id, const ReadOptions& options = {}) = 0;

  // Metadata of the matching trajectories. InvalidArgument when group_id is set without job_id or
  // limit < 0.
  virtual absl::StatusOr<std::vector<TrajectoryMeta>> Scan(const ScanQuery& query) = 0;

  // Reads `ids` for a learner step, ordered as SortForLearner (teacher, then id). NotFound names
  // the first missing id.
  virtual absl::StatusOr<std::vector<Trajectory>> ReadBatch(absl::Span<const TrajectoryId> ids,
                                                            const ReadOptions& options = {}) = 0;

  // Deletes the finished trajectories whose header.policy_version < `policy_version` and returns
  // how many. In-progress ones are kept: their generator still owns them.
  virtual absl::StatusOr<int64_t> DeleteOlderThan(int64_t policy_version) = 0;

  // Reclaims the space of deleted trajectories.
  virtual absl::Status Compact() = 0;
};

// InvalidArgument for a null chunk or a repeated id in an AppendTokensBatch.
absl::Status ValidateBatchShape(absl::Span<const TokenAppend> appends);

// `status` with "appends[index]: " before its message when a batch has more than one append, so
// a single AppendTokens reports exactly what ValidateAppend says.
absl::Status AnnotateBatchError(const absl::Status& status, size_t index, size_t batch_size);

// InvalidArgument for a query no store can answer (group without job, negative limit).
absl::Status ValidateScanQuery(const ScanQuery& query);

// Whether `meta` satisfies every field of `query` except after_id and limit.
bool MatchesQuery(const ScanQuery& query, const TrajectoryMeta& meta);

}  // namespace v4rl::store
