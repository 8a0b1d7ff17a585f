#include "learner/learner_inbox.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace v4rl::learner {

void WeightVersionBoard::Publish(int64_t version) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    latest_ = std::max(latest_, version);
  }
  published_.notify_all();
}

int64_t WeightVersionBoard::Latest() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return latest_;
}

absl::StatusOr<int64_t> WeightVersionBoard::WaitFor(
    int64_t version, std::chrono::steady_clock::time_point deadline,
    const std::function<bool()>& cancelled) const {
  std::unique_lock<std::mutex> lock(mutex_);
  while (latest_ < version) {
    if (cancelled && cancelled()) {
      return absl::CancelledError(absl::StrFormat("waiting for weight version %d", version));
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "weight version %d not published in time; the newest is %d", version, latest_));
    }
    // Wake at least every 100 ms to poll `cancelled`.
    published_.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(100)));
  }
  return latest_;
}

int64_t TrajectoryInbox::Push(absl::Span<const store::TrajectoryId> ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  queue_.insert(queue_.end(), ids.begin(), ids.end());
  return static_cast<int64_t>(queue_.size());
}

std::vector<store::TrajectoryId> TrajectoryInbox::Drain() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<store::TrajectoryId> ids(queue_.begin(), queue_.end());
  queue_.clear();
  return ids;
}

int64_t TrajectoryInbox::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(queue_.size());
}

}  // namespace v4rl::learner
