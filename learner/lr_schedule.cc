#include "learner/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace v4rl::learner {

absl::Status WarmupCosineSchedule::Validate() const {
  std::string problems;
  if (!(peak_lr > 0)) absl::StrAppendFormat(&problems, " peak_lr must be > 0 (got %g);", peak_lr);
  if (!(end_lr >= 0 && end_lr <= peak_lr)) {
    absl::StrAppendFormat(&problems, " end_lr must be in [0, peak_lr] (got %g);", end_lr);
  }
  if (total_steps < 1) absl::StrAppendFormat(&problems, " total_steps must be >= 1 (got %d);", total_steps);
  if (warmup_steps < 0 || warmup_steps > total_steps) {
    absl::StrAppendFormat(&problems, " warmup_steps must be in [0, total_steps] (got %d);",
                          warmup_steps);
  }
  if (problems.empty()) return absl::OkStatus();
  problems.pop_back();
  return absl::InvalidArgumentError("learning-rate schedule:" + problems);
}

double WarmupCosineSchedule::LearningRate(int64_t step) const {
  if (step <= warmup_steps) return peak_lr * static_cast<double>(step) / std::max<int64_t>(warmup_steps, 1);
  const int64_t decay_steps = total_steps - warmup_steps;
  if (decay_steps <= 0 || step >= total_steps) return end_lr;
  const double progress = static_cast<double>(step - warmup_steps) / decay_steps;
  return end_lr + 0.5 * (peak_lr - end_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace v4rl::learner
