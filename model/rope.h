// Rotary position tables (spec §3.2): one per model for sliding-only layers (rope_theta, no
// YaRN) and one for compressed layers (compress_rope_theta with YaRN), used by every rotation of
// a layer: q, window kv, compressed entries, indexer q/k and the output de-rotation.
//
// Frequencies follow transformers' fp32 computation (base^(2i/rd) in f32, YaRN ramp blend); an
// angle is float(position) · θ_i rounded to f32 as transformers' matmul does, its cos/sin then
// rounded from double. No YaRN magnitude scaling (attention_factor = 1, pitfall 2).
// Thread-safety: a RopeTable is immutable.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace v4rl::model {

// θ_i for i < rope_dim / 2; `yarn` (may be null or disabled) interpolates low frequencies.
std::vector<float> RopeInvFreq(double base, int64_t rope_dim, const YarnConfig* yarn);

class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(double base, int64_t rope_dim, const YarnConfig* yarn);

  int64_t rope_dim() const { return rope_dim_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // cos, sin: [count, rope_dim / 2] f32 for positions first, first + stride, ...
  void Fill(int64_t first, int64_t stride, int64_t count, float* cos, float* sin) const;
  // Same as Fill into two new contiguous tensors.
  void Make(int64_t first, int64_t stride, int64_t count, core::Tensor* cos,
            core::Tensor* sin) const;

 private:
  int64_t rope_dim_ = 0;
  std::vector<float> inv_freq_;
};

// The table of a layer type: main for sliding, compress (YaRN) for CSA/HCA.
RopeTable MakeRopeTable(const ModelConfig& config, AttentionType type);

}  // namespace v4rl::model
