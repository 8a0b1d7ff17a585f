#include "store/trajectory_store.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"

namespace v4rl::store {

absl::Status ValidateBatchShape(absl::Span<const TokenAppend> appends) {
  absl::flat_hash_set<TrajectoryId> ids;
  for (size_t i = 0; i < appends.size(); ++i) {
    if (appends[i].chunk == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("appends[%d].chunk is null", i));
    }
    if (!ids.insert(appends[i].id).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("appends[%d] repeats trajectory %d; expected one append per trajectory",
                          i, appends[i].id));
    }
  }
  return absl::OkStatus();
}

absl::Status AnnotateBatchError(const absl::Status& status, size_t index, size_t batch_size) {
  if (status.ok() || batch_size == 1) return status;
  return absl::Status(status.code(), absl::StrFormat("appends[%d]: %s", index, status.message()));
}

absl::Status ValidateScanQuery(const ScanQuery& query) {
  if (query.group_id.has_value() && query.job_id.empty()) {
    return absl::InvalidArgumentError(
        "ScanQuery.group_id is set but job_id is empty; group ids are unique only within a job");
  }
  if (query.limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ScanQuery.limit is %d; expected >= 0 (0 = no limit)", query.limit));
  }
  return absl::OkStatus();
}

bool MatchesQuery(const ScanQuery& query, const TrajectoryMeta& meta) {
  const TrajectoryHeader& header = meta.header;
  if (!query.job_id.empty() && header.job_id != query.job_id) return false;
  if (query.group_id.has_value() && header.group_id != *query.group_id) return false;
  if (header.policy_version < query.min_policy_version ||
      header.policy_version > query.max_policy_version) {
    return false;
  }
  return query.statuses.empty() || std::find(query.statuses.begin(), query.statuses.end(),
                                             meta.status) != query.statuses.end();
}

}  // namespace v4rl::store
