// Reports loss spikes: a step whose loss exceeds the running mean by more than `threshold`
// running standard deviations (exponential moving statistics, after `warmup_steps` observations).
// DeepSeek-V4 switches on anticipatory routing when spikes appear; the detector only reports.
// Not thread-safe.
#pragma once

#include <cstdint>

namespace v4rl::learner {

class LossSpikeDetector {
 public:
  explicit LossSpikeDetector(double threshold = 4.0, double decay = 0.98, int64_t warmup_steps = 20)
      : threshold_(threshold), decay_(decay), warmup_steps_(warmup_steps) {}

  // Returns true when `loss` is a spike. Spikes do not update the statistics, so a run of bad
  // steps keeps being reported. Non-finite losses are always spikes.
  bool Observe(double loss);
  int64_t num_spikes() const { return num_spikes_; }
  double mean() const { return mean_; }
  double stddev() const;

 private:
  double threshold_, decay_;
  int64_t warmup_steps_;
  int64_t observed_ = 0;
  int64_t num_spikes_ = 0;
  double mean_ = 0, variance_ = 0;
};

}  // namespace v4rl::learner
