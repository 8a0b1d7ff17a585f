#include "store/memory_trajectory_store.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "core/status.h"

namespace v4rl::store {

absl::StatusOr<MemoryTrajectoryStore::Entry*> MemoryTrajectoryStore::FindLocked(TrajectoryId id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrFormat("trajectory %d not found", id));
  }
  return &it->second;
}

Trajectory MemoryTrajectoryStore::AssembleLocked(const Entry& entry,
                                                 const ReadOptions& options) const {
  Trajectory trajectory;
  trajectory.meta = entry.meta;
  trajectory.prompt_token_ids = entry.prompt_token_ids;
  trajectory.completion =
      ConcatenateChunks(entry.chunks, entry.meta.header.routing, options.with_routing);
  return trajectory;
}

absl::StatusOr<TrajectoryId> MemoryTrajectoryStore::Begin(
    const TrajectoryHeader& header, absl::Span<const int32_t> prompt_token_ids) {
  V4RL_RETURN_IF_ERROR(ValidateBegin(header, prompt_token_ids));
  Entry entry;
  entry.meta.header = header;
  entry.meta.num_prompt_tokens = static_cast<int64_t>(prompt_token_ids.size());
  entry.meta.max_weight_version = header.policy_version;
  entry.meta.created_us = entry.meta.updated_us = NowMicros();
  entry.prompt_token_ids.assign(prompt_token_ids.begin(), prompt_token_ids.end());
  absl::MutexLock lock(&mutex_);
  entry.meta.id = ++last_id_;
  const TrajectoryId id = entry.meta.id;
  entries_.emplace(id, std::move(entry));
  return id;
}

absl::Status MemoryTrajectoryStore::AppendTokens(TrajectoryId id, int64_t first_token,
                                                 const CompletionTokens& chunk) {
  const TokenAppend append{id, first_token, &chunk};
  return AppendTokensBatch({&append, 1});
}

absl::Status MemoryTrajectoryStore::AppendTokensBatch(absl::Span<const TokenAppend> appends) {
  V4RL_RETURN_IF_ERROR(ValidateBatchShape(appends));
  std::vector<CompletionTokens> copies;  // made before taking the lock
  copies.reserve(appends.size());
  for (const TokenAppend& append : appends) copies.push_back(*append.chunk);
  absl::MutexLock lock(&mutex_);
  // Validate every append before applying any: all or nothing.
  std::vector<Entry*> entries;
  for (size_t i = 0; i < appends.size(); ++i) {
    absl::StatusOr<Entry*> entry = FindLocked(appends[i].id);
    if (entry.ok()) {
      V4RL_RETURN_IF_ERROR(AnnotateBatchError(
          ValidateAppend((*entry)->meta, appends[i].first_token, copies[i]), i, appends.size()));
    }
    V4RL_RETURN_IF_ERROR(AnnotateBatchError(entry.status(), i, appends.size()));
    entries.push_back(*entry);
  }
  const int64_t now_us = NowMicros();
  for (size_t i = 0; i < appends.size(); ++i) {
    ApplyAppend(copies[i], now_us, &entries[i]->meta);
    entries[i]->chunks.push_back(std::move(copies[i]));
  }
  return absl::OkStatus();
}

absl::Status MemoryTrajectoryStore::Finish(TrajectoryId id, TrajectoryStatus status) {
  absl::MutexLock lock(&mutex_);
  V4RL_ASSIGN_OR_RETURN(Entry * entry, FindLocked(id));
  V4RL_RETURN_IF_ERROR(ValidateFinish(entry->meta, status));
  entry->meta.status = status;
  entry->meta.updated_us = entry->meta.finished_us = NowMicros();
  return absl::OkStatus();
}

absl::Status MemoryTrajectoryStore::AddReward(TrajectoryId id, const Reward& reward) {
  absl::MutexLock lock(&mutex_);
  V4RL_ASSIGN_OR_RETURN(Entry * entry, FindLocked(id));
  V4RL_RETURN_IF_ERROR(ValidateReward(entry->meta, reward));
  Reward stored = reward;
  stored.created_us = entry->meta.updated_us = NowMicros();
  entry->meta.rewards.push_back(std::move(stored));
  return absl::OkStatus();
}

absl::StatusOr<TrajectoryMeta> MemoryTrajectoryStore::GetMeta(TrajectoryId id) {
  absl::MutexLock lock(&mutex_);
  V4RL_ASSIGN_OR_RETURN(Entry * entry, FindLocked(id));
  return entry->meta;
}

absl::StatusOr<Trajectory> MemoryTrajectoryStore::Read(TrajectoryId id,
                                                       const ReadOptions& options) {
  absl::MutexLock lock(&mutex_);
  V4RL_ASSIGN_OR_RETURN(Entry * entry, FindLocked(id));
  return AssembleLocked(*entry, options);
}

absl::StatusOr<std::vector<TrajectoryMeta>> MemoryTrajectoryStore::Scan(const ScanQuery& query) {
  V4RL_RETURN_IF_ERROR(ValidateScanQuery(query));
  std::vector<TrajectoryMeta> result;
  absl::MutexLock lock(&mutex_);
  for (auto it = entries_.upper_bound(query.after_id); it != entries_.end(); ++it) {
    if (query.limit > 0 && static_cast<int64_t>(result.size()) == query.limit) break;
    if (MatchesQuery(query, it->second.meta)) result.push_back(it->second.meta);
  }
  return result;
}

absl::StatusOr<std::vector<Trajectory>> MemoryTrajectoryStore::ReadBatch(
    absl::Span<const TrajectoryId> ids, const ReadOptions& options) {
  std::vector<Trajectory> batch;
  batch.reserve(ids.size());
  {
    absl::MutexLock lock(&mutex_);
    for (TrajectoryId id : ids) {
      V4RL_ASSIGN_OR_RETURN(Entry * entry, FindLocked(id));
      batch.push_back(AssembleLocked(*entry, options));
    }
  }
  SortForLearner(&batch);
  return batch;
}

absl::StatusOr<int64_t> MemoryTrajectoryStore::DeleteOlderThan(int64_t policy_version) {
  absl::MutexLock lock(&mutex_);
  int64_t deleted = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    const TrajectoryMeta& meta = it->second.meta;
    if (IsTerminal(meta.status) && meta.header.policy_version < policy_version) {
      it = entries_.erase(it);
      ++deleted;
    } else {
      ++it;
    }
  }
  return deleted;
}

absl::Status MemoryTrajectoryStore::Compact() { return absl::OkStatus(); }

}  // namespace v4rl::store
