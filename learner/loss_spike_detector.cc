#include "learner/loss_spike_detector.h"

#include <cmath>

namespace v4rl::learner {

double LossSpikeDetector::stddev() const { return std::sqrt(variance_); }

bool LossSpikeDetector::Observe(double loss) {
  if (!std::isfinite(loss)) {
    ++num_spikes_;
    return true;
  }
  if (observed_ >= warmup_steps_ && loss > mean_ + threshold_ * std::max(stddev(), 1e-3 * std::fabs(mean_))) {
    ++num_spikes_;
    return true;
  }
  if (observed_ == 0) {
    mean_ = loss;
  } else {
    // Welford-style exponential update of mean and variance.
    const double delta = loss - mean_;
    mean_ += (1 - decay_) * delta;
    variance_ = decay_ * (variance_ + (1 - decay_) * delta * delta);
  }
  ++observed_;
  return false;
}

}  // namespace v4rl::learner
