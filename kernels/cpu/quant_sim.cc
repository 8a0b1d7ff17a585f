#include "kernels/cpu/quant_sim.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"

namespace v4rl::kernels::cpu {

void BlockQuantDequantRef(float* x, int64_t rows, int64_t ld, int64_t width, int64_t block,
                          SimFormat format) {
  const bool fp8 = format == SimFormat::kFp8E4M3;
  const float max_code = fp8 ? 448.0f : 6.0f;
  const float floor = fp8 ? 1e-4f : 6.0f * std::ldexp(1.0f, -126);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
    for (int64_t begin = 0; begin < width; begin += block) {
      const int64_t end = std::min(width, begin + block);
      float amax = floor;
      for (int64_t c = begin; c < end; ++c) amax = std::max(amax, std::fabs(row[c]));
      const float scale = core::Ue8m0ToFloat(core::Ue8m0FromFloatCeil(amax / max_code));
      for (int64_t c = begin; c < end; ++c) {
        const float scaled = std::clamp(row[c] / scale, -max_code, max_code);
        const float rounded = fp8 ? core::F8E4M3ToFloat(core::FloatToF8E4M3Saturating(scaled))
                                  : core::F4E2M1ToFloat(core::FloatToF4E2M1(scaled));
        row[c] = rounded * scale;
      }
    }
  }
}

void HadamardRef(float* x, int64_t rows, int64_t ld, int64_t n) {
  const float norm = 1.0f / std::sqrt(static_cast<float>(n));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
    for (int64_t len = 1; len < n; len *= 2) {
      for (int64_t i = 0; i < n; i += 2 * len) {
        for (int64_t j = i; j < i + len; ++j) {
          const float a = row[j], b = row[j + len];
          row[j] = a + b;
          row[j + len] = a - b;
        }
      }
    }
    for (int64_t j = 0; j < n; ++j) row[j] *= norm;
  }
}

}  // namespace v4rl::kernels::cpu
