// Tensor comparison for tests: max abs / max rel error, cosine distance, relative error by norm,
// and the first index that breaks a tolerance, printed in gtest failure messages.
//
//   EXPECT_TRUE(AllClose(actual, expected, {.atol = 1e-5, .rtol = 1e-5}));
//
// Inputs are CPU views of any floating dtype (converted exactly to f32/f64) with equal shapes.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "gtest/gtest.h"

namespace v4rl::testing {

struct CompareStats {
  double max_abs_error = 0;
  double max_rel_error = 0;       // |a-e| / max(|e|, tiny)
  double rel_error_by_norm = 0;   // ||a-e|| / ||e||
  double cosine_distance = 0;     // 1 - cos(a, e)
  int64_t worst_index = -1;       // flat index of the max abs error
  int64_t first_mismatch = -1;    // first flat index failing the tolerance (-1: none)
  int64_t num_mismatches = 0;
  int64_t num_nan_mismatches = 0;  // NaN in one tensor but not the other
};

struct Tolerance {
  double atol = 1e-6;
  double rtol = 1e-5;  // element ok when |a-e| <= atol + rtol*|e|
};

CompareStats Compare(const core::TensorView& actual, const core::TensorView& expected,
                     const Tolerance& tolerance = {});
std::string Describe(const CompareStats& stats);

// Passes when shapes match and every element is within tolerance; the failure message carries
// Describe() with the first mismatch and its values.
::testing::AssertionResult AllClose(const core::TensorView& actual,
                                    const core::TensorView& expected,
                                    const Tolerance& tolerance = {});
// Passes when ||a-e|| / ||e|| <= bound.
::testing::AssertionResult RelErrorByNormAtMost(const core::TensorView& actual,
                                                const core::TensorView& expected, double bound);

}  // namespace v4rl::testing
