// MoE routing weights: hand-computed values and the backward against finite differences in
// float64, including a repeated expert id (hash tables may repeat one).
#include "kernels/cpu/routing.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/finite_difference.h"

namespace v4rl::kernels::cpu {
namespace {

using testing::Dot;
using testing::GradientMatches;
using testing::NumericalGradient;
using testing::RandomDoubles;

TEST(RoutingWeights, RenormalisesPicksAndScales) {
  const std::vector<float> scores = {1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<int32_t> idx = {3, 1};
  std::vector<float> weights(2);
  RoutingWeightsRef<float>(scores.data(), idx.data(), 1, 4, 2, 1.5f, 0.0f, weights.data());
  EXPECT_FLOAT_EQ(weights[0], 4.0f / 6.0f * 1.5f);
  EXPECT_FLOAT_EQ(weights[1], 2.0f / 6.0f * 1.5f);
}

TEST(RoutingWeightsBackward, MatchesFiniteDifferencesOnlyAtPicks) {
  constexpr int64_t tokens = 3, experts = 5, k = 2;
  std::vector<double> scores = RandomDoubles(tokens * experts, 401);
  for (double& s : scores) s = 0.5 + std::abs(s);  // sqrt(softplus) scores are positive
  const std::vector<int32_t> idx = {4, 1, 0, 2, 3, 3};
  const std::vector<double> g = RandomDoubles(tokens * k, 402);
  auto loss = [&](const std::vector<double>& s) {
    std::vector<double> w(tokens * k);
    RoutingWeightsRef<double>(s.data(), idx.data(), tokens, experts, k, 2.5, 1e-20, w.data());
    return Dot(g, w);
  };
  std::vector<double> dscores(scores.size(), 0.0);
  RoutingWeightsBackwardRef<double>(scores.data(), idx.data(), tokens, experts, k, 2.5, 1e-20,
                                    g.data(), dscores.data());
  EXPECT_TRUE(GradientMatches("dscores", dscores, NumericalGradient(loss, scores)));
  EXPECT_EQ(dscores[0 * experts + 0], 0.0);  // token 0 did not pick expert 0
  EXPECT_EQ(dscores[2 * experts + 1], 0.0);
}

}  // namespace
}  // namespace v4rl::kernels::cpu
