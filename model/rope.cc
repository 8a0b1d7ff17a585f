#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace v4rl::model {

std::vector<float> RopeInvFreq(double base, int64_t rope_dim, const YarnConfig* yarn) {
  const int64_t half = rope_dim / 2;
  const float fbase = static_cast<float>(base);
  std::vector<float> inv_freq(half);
  // θ_i = 1 / base^(2i / rd), in f32 like transformers' `base ** (arange(0, rd, 2) / rd)`.
  std::vector<float> pos_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    pos_freq[i] = std::pow(fbase, exponent);
    inv_freq[i] = 1.0f / pos_freq[i];
  }
  if (yarn == nullptr || !yarn->enabled) return inv_freq;
  // YaRN: dims below `low` keep θ_i, dims above `high` use θ_i / factor, a linear ramp between
  // (transformers' find_correction_range with truncation, linear_ramp_factor).
  auto correction_dim = [&](double rotations) {
    return rope_dim * std::log(yarn->original_max_position_embeddings / (rotations * 2 * M_PI)) /
           (2 * std::log(base));
  };
  double low = std::max(std::floor(correction_dim(yarn->beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(yarn->beta_slow)), double(rope_dim - 1));
  if (low == high) high += 0.001;
  const float factor = static_cast<float>(yarn->factor);
  for (int64_t i = 0; i < half; ++i) {
    const float ramp = std::clamp(
        (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low), 0.0f,
        1.0f);
    const float extrapolation = 1.0f - ramp;
    const float interpolated = 1.0f / (factor * pos_freq[i]);
    inv_freq[i] = interpolated * (1.0f - extrapolation) + inv_freq[i] * extrapolation;
  }
  return inv_freq;
}

RopeTable::RopeTable(double base, int64_t rope_dim, const YarnConfig* yarn)
    : rope_dim_(rope_dim), inv_freq_(RopeInvFreq(base, rope_dim, yarn)) {}

void RopeTable::Fill(int64_t first, int64_t stride, int64_t count, float* cos, float* sin) const {
  const int64_t half = rope_dim_ / 2;
  // One row per position; the angle is rounded to f32 before cos/sin.
  for (int64_t r = 0; r < count; ++r) {
    const float position = static_cast<float>(first + r * stride);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = position * inv_freq_[i];
      cos[r * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[r * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

void RopeTable::Make(int64_t first, int64_t stride, int64_t count, core::Tensor* cos,
                     core::Tensor* sin) const {
  *cos = core::Tensor::Empty(core::DType::kF32, {count, rope_dim_ / 2});
  *sin = core::Tensor::Empty(core::DType::kF32, {count, rope_dim_ / 2});
  Fill(first, stride, count, cos->data<float>(), sin->data<float>());
}

RopeTable MakeRopeTable(const ModelConfig& config, AttentionType type) {
  if (type == AttentionType::kSliding) {
    return RopeTable(config.rope_theta, config.rope_head_dim, nullptr);
  }
  return RopeTable(config.compress_rope_theta, config.rope_head_dim, &config.compress_yarn);
}

}  // namespace v4rl::model
