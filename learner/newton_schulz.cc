#include "learner/newton_schulz.h"

#include <cmath>
#include <vector>

#include "core/logging.h"
#include "core/thread_pool.h"

namespace v4rl::learner {
namespace {

// gram [n, n] <- x [n, m] x^T; symmetric, so each row computes its upper part and mirrors it.
void Gram(const std::vector<float>& x, int64_t n, int64_t m, std::vector<float>& gram) {
  core::ThreadPool::Default().ParallelFor(0, n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = &x[i * m];
      for (int64_t j = i; j < n; ++j) {
        const float* xj = &x[j * m];
        double sum = 0;
        for (int64_t k = 0; k < m; ++k) sum += static_cast<double>(xi[k]) * xj[k];
        gram[i * n + j] = static_cast<float>(sum);
      }
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) gram[i * n + j] = gram[j * n + i];
  }
}

// out [n, m] <- alpha * x + left [n, n] * x, row by row (rows of x are contiguous).
void LeftMultiplyAdd(const std::vector<float>& left, const std::vector<float>& x, float alpha,
                     int64_t n, int64_t m, std::vector<float>& out) {
  core::ThreadPool::Default().ParallelFor(0, n, 4, [&](int64_t begin, int64_t end) {
    std::vector<double> row(m);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t k = 0; k < m; ++k) row[k] = static_cast<double>(alpha) * x[i * m + k];
      for (int64_t j = 0; j < n; ++j) {
        const double weight = left[i * n + j];
        const float* xj = &x[j * m];
        for (int64_t k = 0; k < m; ++k) row[k] += weight * xj[k];
      }
      for (int64_t k = 0; k < m; ++k) out[i * m + k] = static_cast<float>(row[k]);
    }
  });
}

void Iterate(const NewtonSchulzCoefficients& coefficients, int64_t n, int64_t m,
             std::vector<float>& x, std::vector<float>& scratch) {
  std::vector<float> gram(n * n), polynomial(n * n);
  Gram(x, n, m, gram);
  // polynomial = b*A + c*A^2, the n x n factor applied to X.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double square = 0;
      for (int64_t k = 0; k < n; ++k) square += static_cast<double>(gram[i * n + k]) * gram[k * n + j];
      polynomial[i * n + j] =
          static_cast<float>(coefficients.b * gram[i * n + j] + coefficients.c * square);
    }
  }
  LeftMultiplyAdd(polynomial, x, coefficients.a, n, m, scratch);
  x.swap(scratch);
}

}  // namespace

void HybridNewtonSchulz(absl::Span<const float> in, int64_t rows, int64_t cols,
                        absl::Span<float> out, const NewtonSchulzSchedule& schedule) {
  V4RL_CHECK_EQ(static_cast<int64_t>(in.size()), rows * cols);
  V4RL_CHECK_EQ(static_cast<int64_t>(out.size()), rows * cols);
  // Work on the wide orientation [n, m] with n <= m so the Gram matrix is n x n.
  const bool transpose = rows > cols;
  const int64_t n = transpose ? cols : rows;
  const int64_t m = transpose ? rows : cols;
  std::vector<float> x(n * m), scratch(n * m);
  double norm_sq = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float value = in[r * cols + c];
      norm_sq += static_cast<double>(value) * value;
      x[transpose ? c * m + r : r * m + c] = value;
    }
  }
  const float inverse_norm = 1.0f / (static_cast<float>(std::sqrt(norm_sq)) + schedule.norm_epsilon);
  for (float& value : x) value *= inverse_norm;
  for (int i = 0; i < schedule.fast_iterations; ++i) Iterate(schedule.fast, n, m, x, scratch);
  for (int i = 0; i < schedule.settle_iterations; ++i) Iterate(schedule.settle, n, m, x, scratch);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = x[transpose ? c * m + r : r * m + c];
  }
}

}  // namespace v4rl::learner
