// GRPO loss: advantages, the clipped surrogate's branches, the unbiased KL estimate, OPSM, and
// the gradient against finite differences.
#include "learner/grpo_loss.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::learner {
namespace {

TEST(GroupAdvantages, MeanCenteredAndOptionallyStdNormalised) {
  const std::vector<double> rewards = {1, 0, 0, 1, 5};
  const std::vector<int64_t> groups = {0, 0, 0, 0, 1};
  const auto centered = GroupAdvantages(rewards, groups, false, 1e-6);
  EXPECT_DOUBLE_EQ(centered[0], 0.5);
  EXPECT_DOUBLE_EQ(centered[1], -0.5);
  EXPECT_DOUBLE_EQ(centered[4], 0.0);  // group of one
  const auto normalised = GroupAdvantages(rewards, groups, true, 0.0);
  // sample std of {1,0,0,1} = sqrt(1/3)
  EXPECT_NEAR(normalised[0], 0.5 / std::sqrt(1.0 / 3.0), 1e-12);
}

struct Fixture {
  std::vector<std::vector<float>> learner, rollout, reference;
  std::vector<GrpoSequence> Sequences(const std::vector<double>& rewards) const {
    std::vector<GrpoSequence> out;
    for (size_t i = 0; i < learner.size(); ++i) {
      out.push_back({0, rewards[i], learner[i], rollout[i], reference[i]});
    }
    return out;
  }
};

TEST(GrpoLoss, GradientMatchesFiniteDifferences) {
  Fixture f;
  f.learner = {{-1.0f, -0.5f, -2.0f}, {-0.3f, -1.7f}, {-0.9f, -0.1f, -0.4f, -1.1f}};
  f.rollout = {{-1.05f, -0.45f, -2.5f}, {-0.3f, -1.6f}, {-0.95f, -0.2f, -0.35f, -1.0f}};
  f.reference = {{-1.2f, -0.4f, -1.9f}, {-0.5f, -1.5f}, {-1.0f, -0.3f, -0.6f, -0.9f}};
  const std::vector<double> rewards = {1.0, 0.0, 0.5};
  for (bool unbiased : {true, false}) {
    for (auto aggregation : {LossAggregation::kSequenceMean, LossAggregation::kTokenMean}) {
      GrpoOptions options;
      options.kl_coef = 0.3;
      options.unbiased_kl = unbiased;
      options.aggregation = aggregation;
      options.off_policy_masking = false;
      options.clip_low = options.clip_high = 0.9;  // wide: no token clips, so FD sees one branch
      V4RL_ASSERT_OK_AND_ASSIGN(GrpoResult base, GrpoLoss(f.Sequences(rewards), options));
      const double h = 1e-3;
      for (size_t i = 0; i < f.learner.size(); ++i) {
        for (size_t t = 0; t < f.learner[i].size(); ++t) {
          Fixture plus = f, minus = f;
          plus.learner[i][t] += h;
          minus.learner[i][t] -= h;
          const double numeric = (GrpoLoss(plus.Sequences(rewards), options)->loss -
                                  GrpoLoss(minus.Sequences(rewards), options)->loss) /
                                 (2 * h);
          EXPECT_NEAR(base.grad_learner_logprobs[i][t], numeric, 2e-4 * (1 + std::fabs(numeric)))
              << "sequence " << i << " token " << t;
        }
      }
    }
  }
}

TEST(GrpoLoss, ClippedBranchHasNoGradient) {
  const std::vector<float> learner = {0.0f}, rollout = {-1.0f};  // ratio e > 1.2
  GrpoOptions options;
  options.off_policy_masking = false;
  std::vector<GrpoSequence> seqs = {{0, 1.0, learner, rollout, {}}, {0, 0.0, rollout, rollout, {}}};
  V4RL_ASSERT_OK_AND_ASSIGN(GrpoResult result, GrpoLoss(seqs, options));
  EXPECT_EQ(result.grad_learner_logprobs[0][0], 0.0f);  // A > 0, ratio above 1 + clip
  EXPECT_NEAR(result.clip_fraction, 0.5, 1e-12);
  EXPECT_NEAR(result.loss, -0.5 * 1.2 / 2 + 0.5 * 1.0 / 2, 1e-6);
}

TEST(GrpoLoss, OffPolicySequenceMaskingDropsNegativeOffPolicySamples) {
  const std::vector<float> on = {-1.0f, -1.0f};
  const std::vector<float> off_learner = {-3.0f, -3.0f};  // rollout - learner = 2 > delta
  std::vector<GrpoSequence> seqs = {{0, 1.0, on, on, {}}, {0, 0.0, off_learner, on, {}}};
  V4RL_ASSERT_OK_AND_ASSIGN(GrpoResult result, GrpoLoss(seqs, GrpoOptions{}));
  EXPECT_FALSE(result.masked_by_opsm[0]);
  EXPECT_TRUE(result.masked_by_opsm[1]);
  EXPECT_EQ(result.grad_learner_logprobs[1][0], 0.0f);
  EXPECT_DOUBLE_EQ(result.opsm_fraction, 0.5);
  // A positive-advantage sequence is never masked, however off-policy.
  seqs = {{0, 1.0, off_learner, on, {}}, {0, 0.0, on, on, {}}};
  V4RL_ASSERT_OK_AND_ASSIGN(result, GrpoLoss(seqs, GrpoOptions{}));
  EXPECT_FALSE(result.masked_by_opsm[0]);
}

TEST(GrpoLoss, UnbiasedKlIsRatioWeightedK3) {
  const std::vector<float> learner = {-1.0f}, rollout = {-1.5f}, reference = {-2.0f};
  GrpoOptions options;
  options.kl_coef = 1.0;
  options.off_policy_masking = false;
  V4RL_ASSERT_OK_AND_ASSIGN(GrpoResult result,
                            GrpoLoss({{0, 0.0, learner, rollout, reference}}, options));
  const double x = -1.0, k3 = std::exp(x) - x - 1, ratio = std::exp(0.5);
  EXPECT_NEAR(result.mean_kl, ratio * k3, 1e-6);
  EXPECT_NEAR(result.grad_learner_logprobs[0][0], ratio * 1.0, 1e-5);
}

TEST(GrpoLoss, RejectsMismatchedLengths) {
  const std::vector<float> a = {-1.0f, -2.0f}, b = {-1.0f};
  EXPECT_THAT(GrpoLoss({{0, 1.0, a, b, {}}}, GrpoOptions{}),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("GRPO sequence 0")));
  GrpoOptions with_kl;
  with_kl.kl_coef = 0.1;
  EXPECT_THAT(GrpoLoss({{0, 1.0, a, a, {}}}, with_kl),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("reference")));
}

}  // namespace
}  // namespace v4rl::learner
