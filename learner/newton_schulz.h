// Muon's hybrid Newton-Schulz orthogonalisation (DeepSeek-V4): 10 iterations of
// X <- a X + (b A + c A^2) X with A = X X^T on the Frobenius-normalised matrix, 8 with
// (3.4445, -4.7750, 2.0315) that push singular values quickly towards 1, then 2 with
// (2, -1.5, 0.5) that settle them (p(1) = 1, p'(1) = 0). Wide matrices are processed as given and
// tall ones transposed, so A is always the smaller Gram matrix.
// Thread-safe: pure functions; parallel over rows through core::ThreadPool::Default().
#pragma once

#include <cstdint>

#include "absl/types/span.h"

namespace v4rl::learner {

struct NewtonSchulzCoefficients {
  float a, b, c;
};

struct NewtonSchulzSchedule {
  int fast_iterations = 8;
  NewtonSchulzCoefficients fast = {3.4445f, -4.7750f, 2.0315f};
  int settle_iterations = 2;
  NewtonSchulzCoefficients settle = {2.0f, -1.5f, 0.5f};
  float norm_epsilon = 1e-7f;  // added to the Frobenius norm
};

// out [rows, cols] f32 <- orthogonalised `in` [rows, cols] f32 (row-major; in and out may alias).
// An all-zero input gives an all-zero output.
void HybridNewtonSchulz(absl::Span<const float> in, int64_t rows, int64_t cols,
                        absl::Span<float> out, const NewtonSchulzSchedule& schedule = {});

}  // namespace v4rl::learner
