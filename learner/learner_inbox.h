// The learner's two meeting points with rollout producers, as plain C++ (the Learner gRPC service,
// learner/learner_service.h, is a thin layer over them):
//   WeightVersionBoard  the newest published weight version; WaitFor blocks until a version is
//                       published (the job publishes after every step, see grpo_job.h).
//   TrajectoryInbox     ids of finished, rewarded trajectories submitted for training, in
//                       submission order, until the learner drains them.
// Thread-safety: both are fully thread-safe; WaitFor may block any number of threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "store/trajectory.h"

namespace v4rl::learner {

class WeightVersionBoard {
 public:
  // Records `version` as published (an older one than the newest is ignored) and wakes waiters.
  void Publish(int64_t version);
  // The newest published version; -1 before the first.
  int64_t Latest() const;
  // The newest version once it is >= `version`; DeadlineExceeded naming the newest version when
  // `deadline` passes first. `cancelled` (may be empty) is polled so a caller can stop early
  // (Cancelled).
  absl::StatusOr<int64_t> WaitFor(int64_t version, std::chrono::steady_clock::time_point deadline,
                                  const std::function<bool()>& cancelled = {}) const;

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable published_;
  int64_t latest_ = -1;
};

class TrajectoryInbox {
 public:
  // Queues `ids`; returns how many are queued now.
  int64_t Push(absl::Span<const store::TrajectoryId> ids);
  // Removes and returns every queued id, oldest first.
  std::vector<store::TrajectoryId> Drain();
  int64_t size() const;

 private:
  mutable std::mutex mutex_;
  std::deque<store::TrajectoryId> queue_;
};

}  // namespace v4rl::learner
