// Learning-rate schedule: linear warmup from 0 to peak over `warmup_steps`, then cosine decay
// from peak to `end_lr` at `total_steps` (constant end_lr afterwards). Steps count from 1.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace v4rl::learner {

struct WarmupCosineSchedule {
  double peak_lr = 1e-3;
  double end_lr = 1e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // InvalidArgument naming the field: negative rates, end > peak, warmup > total, total < 1.
  absl::Status Validate() const;
  double LearningRate(int64_t step) const;
};

}  // namespace v4rl::learner
