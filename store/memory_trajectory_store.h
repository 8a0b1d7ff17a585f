// MemoryTrajectoryStore: a TrajectoryStore held in process memory, for tests and single-process
// runs where losing everything on exit is fine. Same validation and ordering as the RocksDB store
// (both use store/trajectory.h), so the shared test suite holds both to one contract.
// Owns copies of everything passed in. Thread-safe: one mutex guards all state.
#pragma once

#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "store/trajectory_store.h"

namespace v4rl::store {

class MemoryTrajectoryStore final : public TrajectoryStore {
 public:
  MemoryTrajectoryStore() = default;
  MemoryTrajectoryStore(const MemoryTrajectoryStore&) = delete;
  MemoryTrajectoryStore& operator=(const MemoryTrajectoryStore&) = delete;

  absl::StatusOr<TrajectoryId> Begin(const TrajectoryHeader& header,
                                     absl::Span<const int32_t> prompt_token_ids) override;
  absl::Status AppendTokens(TrajectoryId id, int64_t first_token,
                            const CompletionTokens& chunk) override;
  absl::Status AppendTokensBatch(absl::Span<const TokenAppend> appends) override;
  absl::Status Finish(TrajectoryId id, TrajectoryStatus status) override;
  absl::Status AddReward(TrajectoryId id, const Reward& reward) override;
  absl::StatusOr<TrajectoryMeta> GetMeta(TrajectoryId id) override;
  absl::StatusOr<Trajectory> Read(TrajectoryId id, const ReadOptions& options = {}) override;
  absl::StatusOr<std::vector<TrajectoryMeta>> Scan(const ScanQuery& query) override;
  absl::StatusOr<std::vector<Trajectory>> ReadBatch(absl::Span<const TrajectoryId> ids,
                                                    const ReadOptions& options = {}) override;
  absl::StatusOr<int64_t> DeleteOlderThan(int64_t policy_version) override;
  absl::Status Compact() override;

 private:
  struct Entry {
    TrajectoryMeta meta;
    std::vector<int32_t> prompt_token_ids;
    std::vector<CompletionTokens> chunks;  // one per append, as given
  };

  // NotFound naming the id when absent.
  absl::StatusOr<Entry*> FindLocked(TrajectoryId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  Trajectory AssembleLocked(const Entry& entry, const ReadOptions& options) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);

  absl::Mutex mutex_;
  TrajectoryId last_id_ ABSL_GUARDED_BY(mutex_) = 0;
  std::map<TrajectoryId, Entry> entries_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace v4rl::store
