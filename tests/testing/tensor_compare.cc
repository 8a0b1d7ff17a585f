#include "tests/testing/tensor_compare.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace v4rl::testing {

CompareStats Compare(const core::TensorView& actual, const core::TensorView& expected,
                     const Tolerance& tolerance) {
  const core::Tensor a = core::ToFloat32(actual);
  const core::Tensor e = core::ToFloat32(expected);
  const float* av = a.data<float>();
  const float* ev = e.data<float>();
  CompareStats stats;
  double diff_sq = 0, e_sq = 0, a_sq = 0, dot = 0;
  for (int64_t i = 0; i < e.numel(); ++i) {
    const double x = av[i], y = ev[i];
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) != std::isnan(y)) {
        ++stats.num_nan_mismatches;
        ++stats.num_mismatches;
        if (stats.first_mismatch < 0) stats.first_mismatch = i;
      }
      continue;
    }
    const double abs_error = std::fabs(x - y);
    const double rel_error = abs_error / std::max(std::fabs(y), 1e-30);
    if (abs_error > stats.max_abs_error) {
      stats.max_abs_error = abs_error;
      stats.worst_index = i;
    }
    stats.max_rel_error = std::max(stats.max_rel_error, rel_error);
    if (!(abs_error <= tolerance.atol + tolerance.rtol * std::fabs(y))) {
      ++stats.num_mismatches;
      if (stats.first_mismatch < 0) stats.first_mismatch = i;
    }
    diff_sq += (x - y) * (x - y);
    e_sq += y * y;
    a_sq += x * x;
    dot += x * y;
  }
  stats.rel_error_by_norm = e_sq > 0 ? std::sqrt(diff_sq / e_sq) : std::sqrt(diff_sq);
  stats.cosine_distance = (a_sq > 0 && e_sq > 0) ? 1.0 - dot / std::sqrt(a_sq * e_sq) : 0.0;
  return stats;
}

std::string Describe(const CompareStats& stats) {
  return absl::StrFormat(
      "max_abs=%.3g max_rel=%.3g rel_by_norm=%.3g cos_dist=%.3g worst_index=%d mismatches=%d "
      "(nan %d) first_mismatch=%d",
      stats.max_abs_error, stats.max_rel_error, stats.rel_error_by_norm, stats.cosine_distance,
      stats.worst_index, stats.num_mismatches, stats.num_nan_mismatches, stats.first_mismatch);
}

::testing::AssertionResult AllClose(const core::TensorView& actual,
                                    const core::TensorView& expected,
                                    const Tolerance& tolerance) {
  if (!actual.SameShape(expected.shape_vector())) {
    return ::testing::AssertionFailure()
           << "shape " << actual.DebugString() << " != expected " << expected.DebugString();
  }
  const CompareStats stats = Compare(actual, expected, tolerance);
  if (stats.num_mismatches == 0) return ::testing::AssertionSuccess() << Describe(stats);
  const int64_t i = stats.first_mismatch;
  return ::testing::AssertionFailure()
         << Describe(stats) << "; at " << i << ": actual "
         << core::LoadAsFloat(core::Tensor::CopyOf(actual).view().data, actual.dtype, i)
         << " expected "
         << core::LoadAsFloat(core::Tensor::CopyOf(expected).view().data, expected.dtype, i)
         << " (atol " << tolerance.atol << ", rtol " << tolerance.rtol << ")";
}

::testing::AssertionResult RelErrorByNormAtMost(const core::TensorView& actual,
                                                const core::TensorView& expected, double bound) {
  if (!actual.SameShape(expected.shape_vector())) {
    return ::testing::AssertionFailure()
           << "shape " << actual.DebugString() << " != expected " << expected.DebugString();
  }
  const CompareStats stats = Compare(actual, expected);
  if (stats.rel_error_by_norm <= bound) return ::testing::AssertionSuccess() << Describe(stats);
  return ::testing::AssertionFailure()
         << "relative error by norm " << stats.rel_error_by_norm << " > " << bound << "; "
         << Describe(stats);
}

}  // namespace v4rl::testing
