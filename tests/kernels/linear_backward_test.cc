// LinearBackwardRef against finite differences of LinearRef in float64, its accumulate
// semantics, strided rows, and thread-count independence in float.
#include "kernels/cpu/linear_backward.h"

#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/linear.h"
#include "tests/testing/finite_difference.h"

namespace v4rl::kernels::cpu {
namespace {

using testing::Dot;
using testing::GradientMatches;
using testing::NumericalGradient;
using testing::RandomDoubles;

TEST(LinearBackward, MatchesFiniteDifferencesWithStridedRows) {
  // x rows padded to stride 7, dy to stride 6: the kernel must honour leading dimensions.
  constexpr int64_t m = 3, n = 5, k = 4, ldx = 7, ldw = 4, ldy = 6;
  const std::vector<double> x = RandomDoubles(m * ldx, 1);
  const std::vector<double> w = RandomDoubles(n * ldw, 2);
  const std::vector<double> g = RandomDoubles(m * ldy, 3);
  auto loss_x = [&](const std::vector<double>& z) {
    std::vector<double> y(m * ldy, 0.0);
    LinearRef<double>(z.data(), ldx, w.data(), ldw, y.data(), ldy, m, n, k, nullptr);
    return Dot(g, y);
  };
  auto loss_w = [&](const std::vector<double>& z) {
    std::vector<double> y(m * ldy, 0.0);
    LinearRef<double>(x.data(), ldx, z.data(), ldw, y.data(), ldy, m, n, k, nullptr);
    return Dot(g, y);
  };
  std::vector<double> dx(m * ldx, 0.0), dw(n * ldw, 0.0);
  core::ThreadPool pool(2);
  LinearBackwardRef<double>(x.data(), ldx, w.data(), ldw, g.data(), ldy, dx.data(), ldx, dw.data(),
                            ldw, m, n, k, &pool);
  EXPECT_TRUE(GradientMatches("dx", dx, NumericalGradient(loss_x, x)));
  EXPECT_TRUE(GradientMatches("dw", dw, NumericalGradient(loss_w, w)));
  // Padding columns of dx are untouched.
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = k; c < ldx; ++c) EXPECT_EQ(dx[r * ldx + c], 0.0);
  }
}

TEST(LinearBackward, AccumulatesIntoOutputs) {
  constexpr int64_t m = 2, n = 3, k = 2;
  const std::vector<double> x = RandomDoubles(m * k, 4);
  const std::vector<double> w = RandomDoubles(n * k, 5);
  const std::vector<double> g = RandomDoubles(m * n, 6);
  std::vector<double> dx_once(m * k, 0.0), dw_once(n * k, 0.0);
  LinearBackwardRef<double>(x.data(), k, w.data(), k, g.data(), n, dx_once.data(), k,
                            dw_once.data(), k, m, n, k, nullptr);
  std::vector<double> dx = dx_once, dw = dw_once;
  LinearBackwardRef<double>(x.data(), k, w.data(), k, g.data(), n, dx.data(), k, dw.data(), k, m, n,
                            k, nullptr);
  for (int64_t i = 0; i < m * k; ++i) EXPECT_DOUBLE_EQ(dx[i], 2 * dx_once[i]);
  for (int64_t i = 0; i < n * k; ++i) EXPECT_DOUBLE_EQ(dw[i], 2 * dw_once[i]);
}

TEST(LinearBackward, FloatResultsDoNotDependOnThreadCount) {
  constexpr int64_t m = 37, n = 19, k = 23;
  std::vector<float> x(m * k), w(n * k), g(m * n);
  const std::vector<double> xs = RandomDoubles(m * k, 7), ws = RandomDoubles(n * k, 8),
                            gs = RandomDoubles(m * n, 9);
  for (int64_t i = 0; i < m * k; ++i) x[i] = static_cast<float>(xs[i]);
  for (int64_t i = 0; i < n * k; ++i) w[i] = static_cast<float>(ws[i]);
  for (int64_t i = 0; i < m * n; ++i) g[i] = static_cast<float>(gs[i]);
  std::vector<float> dx1(m * k, 0.0f), dw1(n * k, 0.0f), dx3(m * k, 0.0f), dw3(n * k, 0.0f);
  LinearBackwardRef<float>(x.data(), k, w.data(), k, g.data(), n, dx1.data(), k, dw1.data(), k, m,
                           n, k, nullptr);
  core::ThreadPool pool(3);
  LinearBackwardRef<float>(x.data(), k, w.data(), k, g.data(), n, dx3.data(), k, dw3.data(), k, m,
                           n, k, &pool);
  EXPECT_EQ(dx1, dx3);
  EXPECT_EQ(dw1, dw3);
}

}  // namespace
}  // namespace v4rl::kernels::cpu
