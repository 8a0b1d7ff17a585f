// Token losses against finite differences in float64, hand-computed values, and the kept-set
// (keep-sampling-mask) renormalisation.
#include "kernels/cpu/token_losses.h"

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "tests/testing/finite_difference.h"

namespace v4rl::kernels::cpu {
namespace {

std::vector<double> RandomLogits(int64_t n, uint64_t seed, double scale = 2.0) {
  std::vector<double> values(n);
  const core::Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) values[i] = scale * rng.Normal(i);
  return values;
}

constexpr int64_t kRows = 5, kVocab = 11;

TEST(TokenLosses, LogprobAndEntropyGradientsMatchFiniteDifferences) {
  const std::vector<double> logits = RandomLogits(kRows * kVocab, 1);
  const std::vector<int32_t> targets = {3, 0, 10, -1, 7};
  const std::vector<int32_t> kept = {0, 4, 0, 0, 11};
  const std::vector<double> g_logprob = {0.3, -1.2, 0.7, 5.0, 1.1};
  const std::vector<double> g_entropy = {-0.4, 0.9, 0.2, 1.0, -0.6};
  // Target 0 must be inside the kept top-4 of row 1 for a finite logprob: make it the largest.
  std::vector<double> x = logits;
  x[1 * kVocab + 0] = 10.0;
  auto objective = [&](const std::vector<double>& z) {
    std::vector<double> lp(kRows), ent(kRows);
    TokenLogprobsRef<double>(z.data(), targets.data(), kept.data(), kRows, kVocab, lp.data(),
                             ent.data(), nullptr);
    double total = 0;
    for (int r = 0; r < kRows; ++r) total += g_logprob[r] * lp[r] + g_entropy[r] * ent[r];
    return total;
  };
  std::vector<double> analytic(kRows * kVocab);
  core::ThreadPool pool(2);
  TokenLogprobsBackwardRef<double>(x.data(), targets.data(), kept.data(), kRows, kVocab,
                                   g_logprob.data(), g_entropy.data(), analytic.data(), &pool);
  EXPECT_LE(testing::RelativeErrorByNorm(analytic, testing::NumericalGradient(objective, x)), 1e-6);
  for (int j = 0; j < kVocab; ++j) EXPECT_EQ(analytic[3 * kVocab + j], 0.0);  // skipped row
}

TEST(TokenLosses, KeptSetRenormalisesOverTopK) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f};  // tie between ids 1 and 3
  const std::vector<int32_t> kept = {2};
  float lp, ent;
  // Top-2 = {1, 3} (the tie keeps both); p(3) = 1/2.
  int32_t target = 3;
  TokenLogprobsRef<float>(logits.data(), &target, kept.data(), 1, 4, &lp, &ent, nullptr);
  EXPECT_NEAR(lp, std::log(0.5), 1e-6);
  EXPECT_NEAR(ent, std::log(2.0), 1e-6);
  target = 2;  // outside the kept set
  TokenLogprobsRef<float>(logits.data(), &target, kept.data(), 1, 4, &lp, nullptr, nullptr);
  EXPECT_TRUE(std::isinf(lp) && lp < 0);
  const std::vector<int32_t> kept_one = {1};  // ties resolve to the lower id: {1}
  target = 1;
  TokenLogprobsRef<float>(logits.data(), &target, kept_one.data(), 1, 4, &lp, nullptr, nullptr);
  EXPECT_NEAR(lp, 0.0, 1e-7);
}

TEST(TokenLosses, MaskedCrossEntropyValueAndGradient) {
  const std::vector<double> logits = RandomLogits(kRows * kVocab, 2);
  const std::vector<int32_t> targets = {1, 2, 99999, 4, 5};  // row 2 is masked out
  const std::vector<double> mask = {1, 1, 0, 1, 0.5};
  auto loss_of = [&](const std::vector<double>& z) {
    return MaskedCrossEntropyRef<double>(z.data(), targets.data(), mask.data(), kRows, kVocab,
                                         nullptr, nullptr);
  };
  // Hand value for row 0 alone.
  const std::vector<double> one_mask = {1, 0, 0, 0, 0};
  double log_sum = 0;
  for (int j = 0; j < kVocab; ++j) log_sum += std::exp(logits[j]);
  EXPECT_NEAR(MaskedCrossEntropyRef<double>(logits.data(), targets.data(), one_mask.data(), kRows,
                                            kVocab, nullptr, nullptr),
              std::log(log_sum) - logits[1], 1e-12);
  std::vector<double> analytic(kRows * kVocab);
  loss_of(logits);
  MaskedCrossEntropyRef<double>(logits.data(), targets.data(), mask.data(), kRows, kVocab,
                                analytic.data(), nullptr);
  EXPECT_LE(testing::RelativeErrorByNorm(analytic, testing::NumericalGradient(loss_of, logits)), 1e-6);
  const std::vector<double> no_mask(kRows, 0.0);
  EXPECT_EQ(MaskedCrossEntropyRef<double>(logits.data(), targets.data(), no_mask.data(), kRows,
                                          kVocab, analytic.data(), nullptr),
            0.0);
}

TEST(TokenLosses, KlDivergenceValueAndGradient) {
  const std::vector<double> student = RandomLogits(kRows * kVocab, 3);
  const std::vector<double> teacher = RandomLogits(kRows * kVocab, 4);
  const std::vector<double> weights = {1.0, 0.5, 2.0, 0.0, 1.5};
  std::vector<double> kl(kRows);
  KlDivergenceRef<double>(student.data(), student.data(), nullptr, kRows, kVocab, kl.data(),
                          nullptr, nullptr);
  for (double v : kl) EXPECT_NEAR(v, 0.0, 1e-12);  // KL(p || p) = 0
  auto objective = [&](const std::vector<double>& s) {
    std::vector<double> values(kRows);
    KlDivergenceRef<double>(s.data(), teacher.data(), nullptr, kRows, kVocab, values.data(),
                            nullptr, nullptr);
    double total = 0;
    for (int r = 0; r < kRows; ++r) total += weights[r] * values[r];
    return total;
  };
  std::vector<double> analytic(kRows * kVocab);
  KlDivergenceRef<double>(student.data(), teacher.data(), weights.data(), kRows, kVocab,
                          kl.data(), analytic.data(), nullptr);
  for (double v : kl) EXPECT_GT(v, 0.0);
  EXPECT_LE(testing::RelativeErrorByNorm(analytic, testing::NumericalGradient(objective, student)), 1e-6);
}

TEST(TokenLosses, FloatMatchesDouble) {
  const std::vector<double> logits = RandomLogits(kRows * kVocab, 5, 8.0);
  std::vector<float> logits_f(logits.begin(), logits.end());
  const std::vector<int32_t> targets = {0, 1, 2, 3, 4};
  std::vector<float> lp_f(kRows);
  std::vector<double> lp_d(kRows);
  TokenLogprobsRef<float>(logits_f.data(), targets.data(), nullptr, kRows, kVocab, lp_f.data(),
                          nullptr, nullptr);
  TokenLogprobsRef<double>(logits.data(), targets.data(), nullptr, kRows, kVocab, lp_d.data(),
                           nullptr, nullptr);
  for (int r = 0; r < kRows; ++r) EXPECT_NEAR(lp_f[r], lp_d[r], 1e-5 * (1 + std::fabs(lp_d[r])));
}

}  // namespace
}  // namespace v4rl::kernels::cpu
