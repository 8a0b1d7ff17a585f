// mHC backward against finite differences of the forward references in float64: the Sinkhorn
// projection (all 20 iterations), the pre/post/comb coefficients, the hc_head gates, the
// collapse and the expand-and-mix.
#include "kernels/cpu/mhc_backward.h"

#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/mhc.h"
#include "tests/testing/finite_difference.h"

namespace v4rl::kernels::cpu {
namespace {

using testing::Dot;
using testing::GradientMatches;
using testing::NumericalGradient;
using testing::RandomDoubles;

constexpr int64_t kN = 4;       // hc_mult
constexpr int64_t kIters = 20;  // hc_sinkhorn_iters
constexpr double kEps = 1e-6;   // hc_eps
constexpr int64_t kTokens = 3;
constexpr int64_t kWidth = (2 + kN) * kN;

TEST(SinkhornBackward, MatchesFiniteDifferencesThroughEveryIteration) {
  const std::vector<double> logits = RandomDoubles(kN * kN, 301, 2.0);
  const std::vector<double> g = RandomDoubles(kN * kN, 302);
  auto loss = [&](const std::vector<double>& z) {
    std::vector<double> m = z;
    SinkhornRef<double>(m.data(), kN, kIters, kEps);
    return Dot(g, m);
  };
  std::vector<double> analytic(kN * kN, 0.0);
  SinkhornBackwardRef<double>(logits.data(), kN, kIters, kEps, g.data(), analytic.data());
  EXPECT_TRUE(GradientMatches("dlogits", analytic, NumericalGradient(loss, logits)));
}

TEST(SinkhornBackward, SingleIterationAndLargeEpsMatchFiniteDifferences) {
  // A short chain with a large eps exercises the eps terms that 20 iterations wash out.
  const std::vector<double> logits = RandomDoubles(9, 303);
  const std::vector<double> g = RandomDoubles(9, 304);
  for (int64_t iters : {1, 2}) {
    auto loss = [&](const std::vector<double>& z) {
      std::vector<double> m = z;
      SinkhornRef<double>(m.data(), 3, iters, 0.1);
      return Dot(g, m);
    };
    std::vector<double> analytic(9, 0.0);
    SinkhornBackwardRef<double>(logits.data(), 3, iters, 0.1, g.data(), analytic.data());
    EXPECT_TRUE(GradientMatches("dlogits", analytic, NumericalGradient(loss, logits)))
        << "iters " << iters;
  }
}

TEST(MhcCoefficientsBackward, MatchesFiniteDifferences) {
  const std::vector<double> mixes = RandomDoubles(kTokens * kWidth, 311);
  const std::vector<double> base = RandomDoubles(kWidth, 312, 0.5);
  const std::vector<double> scale = {0.8, 1.3, 1.7};
  const std::vector<double> g_pre = RandomDoubles(kTokens * kN, 313);
  const std::vector<double> g_post = RandomDoubles(kTokens * kN, 314);
  const std::vector<double> g_comb = RandomDoubles(kTokens * kN * kN, 315);
  auto loss = [&](const std::vector<double>& m, const std::vector<double>& b,
                  const std::vector<double>& s) {
    std::vector<double> pre(kTokens * kN), post(kTokens * kN), comb(kTokens * kN * kN);
    MhcCoefficientsRef<double>(m.data(), b.data(), s.data(), kTokens, kN, kIters, kEps, pre.data(),
                               post.data(), comb.data(), nullptr);
    return Dot(g_pre, pre) + Dot(g_post, post) + Dot(g_comb, comb);
  };
  std::vector<double> dmixes(mixes.size(), 0.0), dbase(kWidth, 0.0), dscale(3, 0.0);
  core::ThreadPool pool(2);
  MhcCoefficientsBackwardRef<double>(mixes.data(), base.data(), scale.data(), kTokens, kN, kIters,
                                     kEps, g_pre.data(), g_post.data(), g_comb.data(),
                                     dmixes.data(), dbase.data(), dscale.data(), &pool);
  EXPECT_TRUE(GradientMatches(
      "dmixes", dmixes,
      NumericalGradient([&](const auto& z) { return loss(z, base, scale); }, mixes)));
  EXPECT_TRUE(GradientMatches(
      "dbase", dbase,
      NumericalGradient([&](const auto& z) { return loss(mixes, z, scale); }, base)));
  EXPECT_TRUE(GradientMatches(
      "dscale", dscale,
      NumericalGradient([&](const auto& z) { return loss(mixes, base, z); }, scale)));
}

TEST(HcHeadPreBackward, MatchesFiniteDifferences) {
  const std::vector<double> mixes = RandomDoubles(kTokens * kN, 321);
  const std::vector<double> base = RandomDoubles(kN, 322, 0.5);
  const std::vector<double> scale = {1.4};
  const std::vector<double> g = RandomDoubles(kTokens * kN, 323);
  auto loss = [&](const std::vector<double>& m, const std::vector<double>& b,
                  const std::vector<double>& s) {
    std::vector<double> pre(kTokens * kN);
    HcHeadPreRef<double>(m.data(), b.data(), s.data(), kTokens, kN, kEps, pre.data());
    return Dot(g, pre);
  };
  std::vector<double> dmixes(mixes.size(), 0.0), dbase(kN, 0.0), dscale(1, 0.0);
  HcHeadPreBackwardRef<double>(mixes.data(), base.data(), scale.data(), kTokens, kN, g.data(),
                               dmixes.data(), dbase.data(), dscale.data());
  EXPECT_TRUE(GradientMatches(
      "dmixes", dmixes,
      NumericalGradient([&](const auto& z) { return loss(z, base, scale); }, mixes)));
  EXPECT_TRUE(GradientMatches(
      "dbase", dbase,
      NumericalGradient([&](const auto& z) { return loss(mixes, z, scale); }, base)));
  EXPECT_TRUE(GradientMatches(
      "dscale", dscale,
      NumericalGradient([&](const auto& z) { return loss(mixes, base, z); }, scale)));
}

TEST(MhcCollapseAndExpandBackward, MatchFiniteDifferences) {
  constexpr int64_t hidden = 5;
  const std::vector<double> streams = RandomDoubles(kTokens * kN * hidden, 331);
  const std::vector<double> pre = RandomDoubles(kTokens * kN, 332);
  const std::vector<double> y = RandomDoubles(kTokens * hidden, 333);
  const std::vector<double> post = RandomDoubles(kTokens * kN, 334);
  const std::vector<double> comb = RandomDoubles(kTokens * kN * kN, 335);
  const std::vector<double> g_collapse = RandomDoubles(kTokens * hidden, 336);
  const std::vector<double> g_expand = RandomDoubles(kTokens * kN * hidden, 337);
  core::ThreadPool pool(2);

  auto collapse_loss = [&](const std::vector<double>& x, const std::vector<double>& p) {
    std::vector<double> out(kTokens * hidden);
    MhcCollapseRef<double>(x.data(), p.data(), kTokens, kN, hidden, out.data(), nullptr);
    return Dot(g_collapse, out);
  };
  std::vector<double> dstreams(streams.size(), 0.0), dpre(pre.size(), 0.0);
  MhcCollapseBackwardRef<double>(streams.data(), pre.data(), g_collapse.data(), kTokens, kN, hidden,
                                 dstreams.data(), dpre.data(), &pool);
  EXPECT_TRUE(GradientMatches(
      "dstreams", dstreams,
      NumericalGradient([&](const auto& z) { return collapse_loss(z, pre); }, streams)));
  EXPECT_TRUE(GradientMatches(
      "dpre", dpre,
      NumericalGradient([&](const auto& z) { return collapse_loss(streams, z); }, pre)));

  auto expand_loss = [&](const std::vector<double>& x, const std::vector<double>& yy,
                         const std::vector<double>& p, const std::vector<double>& c) {
    std::vector<double> out(kTokens * kN * hidden);
    MhcExpandRef<double>(x.data(), yy.data(), p.data(), c.data(), kTokens, kN, hidden, out.data(),
                         nullptr);
    return Dot(g_expand, out);
  };
  std::vector<double> dx(streams.size(), 0.0), dy(y.size(), 0.0), dpost(post.size(), 0.0),
      dcomb(comb.size(), 0.0);
  MhcExpandBackwardRef<double>(streams.data(), y.data(), post.data(), comb.data(), g_expand.data(),
                               kTokens, kN, hidden, dx.data(), dy.data(), dpost.data(),
                               dcomb.data(), &pool);
  EXPECT_TRUE(GradientMatches(
      "dx", dx,
      NumericalGradient([&](const auto& z) { return expand_loss(z, y, post, comb); }, streams)));
  EXPECT_TRUE(GradientMatches(
      "dy", dy,
      NumericalGradient([&](const auto& z) { return expand_loss(streams, z, post, comb); }, y)));
  EXPECT_TRUE(GradientMatches(
      "dpost", dpost,
      NumericalGradient([&](const auto& z) { return expand_loss(streams, y, z, comb); }, post)));
  EXPECT_TRUE(GradientMatches(
      "dcomb", dcomb,
      NumericalGradient([&](const auto& z) { return expand_loss(streams, y, post, z); }, comb)));
}

}  // namespace
}  // namespace v4rl::kernels::cpu
