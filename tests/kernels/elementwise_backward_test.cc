// RMSNorm, RoPE, sqrt(softplus) and clamped-SwiGLU backward against finite differences of their
// forward references in float64.
#include "kernels/cpu/elementwise_backward.h"

#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/elementwise.h"
#include "tests/testing/finite_difference.h"

namespace v4rl::kernels::cpu {
namespace {

using testing::Dot;
using testing::GradientMatches;
using testing::NumericalGradient;
using testing::RandomDoubles;

class RmsNormBackwardTest : public ::testing::TestWithParam<bool> {};

TEST_P(RmsNormBackwardTest, MatchesFiniteDifferences) {
  const bool weighted = GetParam();
  constexpr int64_t rows = 4, dim = 6, ld = 8;
  constexpr double eps = 1e-6;
  const std::vector<double> x = RandomDoubles(rows * ld, 11);
  const std::vector<double> w = RandomDoubles(dim, 12);
  const std::vector<double> g = RandomDoubles(rows * ld, 13);
  const double* weight = weighted ? w.data() : nullptr;
  auto forward = [&](const std::vector<double>& xs, const double* ws) {
    std::vector<double> y(rows * ld, 0.0);
    RmsNormRef<double>(xs.data(), ld, ws, eps, y.data(), ld, rows, dim, nullptr);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = dim; c < ld; ++c) y[r * ld + c] = 0;  // padding is not an output
    }
    return Dot(g, y);
  };
  std::vector<double> dx(rows * ld, 0.0), dw(dim, 0.0);
  core::ThreadPool pool(2);
  RmsNormBackwardRef<double>(x.data(), ld, weight, eps, g.data(), ld, dx.data(), ld,
                             weighted ? dw.data() : nullptr, rows, dim, &pool);
  std::vector<double> numeric_dx =
      NumericalGradient([&](const std::vector<double>& z) { return forward(z, weight); }, x);
  EXPECT_TRUE(GradientMatches("dx", dx, numeric_dx));
  if (weighted) {
    std::vector<double> numeric_dw =
        NumericalGradient([&](const std::vector<double>& z) { return forward(x, z.data()); }, w);
    EXPECT_TRUE(GradientMatches("dw", dw, numeric_dw));
  }
}

INSTANTIATE_TEST_SUITE_P(WeightedAndUnweighted, RmsNormBackwardTest, ::testing::Bool());

class RopeBackwardTest : public ::testing::TestWithParam<bool> {};

TEST_P(RopeBackwardTest, MatchesFiniteDifferences) {
  const bool inverse = GetParam();
  // 3 rows of 2 heads of 10 channels, rope on the trailing 4, rows padded to stride 23.
  constexpr int64_t rows = 3, heads = 2, head_dim = 10, rope_dim = 4, head_stride = 11,
                    row_stride = 23;
  const std::vector<double> x = RandomDoubles(rows * row_stride, 21);
  const std::vector<double> g = RandomDoubles(rows * row_stride, 22);
  std::vector<double> cos(rows * rope_dim / 2), sin(rows * rope_dim / 2);
  const std::vector<double> angles = RandomDoubles(rows * rope_dim / 2, 23, 2.0);
  for (size_t i = 0; i < angles.size(); ++i) {
    cos[i] = std::cos(angles[i]);
    sin[i] = std::sin(angles[i]);
  }
  auto loss = [&](const std::vector<double>& z) {
    std::vector<double> y = z;
    RopeRef<double>(y.data(), rows, heads, row_stride, head_stride, head_dim, rope_dim, cos.data(),
                    sin.data(), inverse, nullptr);
    return Dot(g, y);
  };
  std::vector<double> grad = g;
  RopeBackwardRef<double>(grad.data(), rows, heads, row_stride, head_stride, head_dim, rope_dim,
                          cos.data(), sin.data(), inverse, nullptr);
  EXPECT_TRUE(GradientMatches("dx", grad, NumericalGradient(loss, x)));
}

INSTANTIATE_TEST_SUITE_P(ForwardAndConjugate, RopeBackwardTest, ::testing::Bool());

TEST(SqrtSoftplusBackward, MatchesFiniteDifferencesOnBothSidesOfTheThreshold) {
  // PyTorch's softplus is linear above 20; keep clear of the kink itself.
  std::vector<double> x = RandomDoubles(12, 31, 3.0);
  x.push_back(25.0);
  x.push_back(40.0);
  x.push_back(-15.0);
  const std::vector<double> g = RandomDoubles(x.size(), 32);
  auto loss = [&](const std::vector<double>& z) {
    std::vector<double> y(z.size());
    SqrtSoftplusRef<double>(z.data(), y.data(), z.size());
    return Dot(g, y);
  };
  std::vector<double> dx(x.size(), 0.0);
  SqrtSoftplusBackwardRef<double>(x.data(), g.data(), dx.data(), x.size());
  EXPECT_TRUE(GradientMatches("dx", dx, NumericalGradient(loss, x)));
}

TEST(SwiGluClampBackward, MatchesFiniteDifferencesAndZeroesClampedInputs) {
  constexpr double limit = 1.5;
  // Values inside the clamp range and beyond it (but not on its edges, where FD straddles).
  std::vector<double> gate = RandomDoubles(10, 41, 1.0);
  std::vector<double> up = RandomDoubles(10, 42, 1.0);
  gate.push_back(3.0);  // gate clamped from above
  up.push_back(0.7);
  gate.push_back(-4.0);  // gate never clamped from below
  up.push_back(-0.3);
  gate.push_back(0.4);  // up clamped on both sides
  up.push_back(2.5);
  gate.push_back(0.9);
  up.push_back(-2.5);
  for (double& v : gate) {
    if (std::abs(v - limit) < 1e-3) v += 0.1;
  }
  for (double& v : up) {
    if (std::abs(std::abs(v) - limit) < 1e-3) v += 0.1;
  }
  const int64_t n = gate.size();
  const std::vector<double> g = RandomDoubles(n, 43);
  auto loss = [&](const std::vector<double>& gs, const std::vector<double>& us) {
    std::vector<double> y(n);
    SwiGluClampRef<double>(gs.data(), us.data(), limit, y.data(), n);
    return Dot(g, y);
  };
  std::vector<double> dgate(n, 0.0), dup(n, 0.0);
  SwiGluClampBackwardRef<double>(gate.data(), up.data(), limit, g.data(), dgate.data(), dup.data(),
                                 n);
  EXPECT_TRUE(GradientMatches("dgate", dgate,
                              NumericalGradient([&](const auto& z) { return loss(z, up); }, gate)));
  EXPECT_TRUE(GradientMatches("dup", dup,
                              NumericalGradient([&](const auto& z) { return loss(gate, z); }, up)));
  EXPECT_EQ(dgate[10], 0.0);
  EXPECT_EQ(dup[12], 0.0);
  EXPECT_EQ(dup[13], 0.0);
  EXPECT_NE(dgate[11], 0.0);
}

}  // namespace
}  // namespace v4rl::kernels::cpu
