// Acceptance of issue 3: the fp32 forward equals transformers 5.17 DeepseekV4ForCausalLM in fp32
// on the committed random tiny models (tests/data/model/, scripts/make_model_fixtures.py):
//  - mixed_small: sliding/CSA/HCA layers, hash + top-k MoE, ratios 4 and 8, index_topk 3 < 10
//    entries, batch 2;
//  - ratios_4_128: real ratios 4 and 128 with YaRN, T = 300 (two HCA windows complete),
//    index_topk 16 < 75 entries;
//  - deepseek_fp8: DeepSeek key names and inference config, FP8 block-scaled weights and FP4
//    experts (the reference model holds the dequantised values), plus the MTP block.
// The bound is max|logits - ref| / max|ref| <= 1e-4 (issue 3); routed expert ids must be equal.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "gtest/gtest.h"
#include "model/forward.h"
#include "tests/model/fixtures.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::model {
namespace {

using testing::Reference;

double MaxAbs(const core::Tensor& t) {
  double m = 0;
  for (float v : t.ToFloatVector()) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

// Max abs error and max abs error relative to the largest reference magnitude.
void ExpectClose(const char* fixture, const char* what, const core::Tensor& actual,
                 const core::Tensor& expected, double bound) {
  ASSERT_TRUE(actual.view().SameShape(expected.view().shape_vector()))
      << what << ": " << actual.view().DebugString() << " vs " << expected.view().DebugString();
  const v4rl::testing::CompareStats stats = v4rl::testing::Compare(actual.view(), expected.view());
  const double rel = stats.max_abs_error / MaxAbs(expected);
  std::printf("[parity] %-13s %-11s max_abs %.3e  max_abs/max|ref| %.3e  rel_by_norm %.3e\n",
              fixture, what, stats.max_abs_error, rel, stats.rel_error_by_norm);
  EXPECT_LE(rel, bound) << fixture << " " << what << ": " << v4rl::testing::Describe(stats);
}

// Reference routed ids are [layers, B·T, k] sorted per token; ours [B, T, k] in pick order.
void ExpectSameRouting(const std::vector<core::Tensor>& ours, const core::Tensor& reference) {
  ASSERT_EQ(static_cast<int64_t>(ours.size()), reference.size(0));
  const int64_t tokens = reference.size(1), k = reference.size(2);
  int64_t mismatches = 0;
  for (size_t l = 0; l < ours.size(); ++l) {
    ASSERT_EQ(ours[l].numel(), tokens * k);
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<int32_t> picks(ours[l].data<int32_t>() + t * k,
                                 ours[l].data<int32_t>() + (t + 1) * k);
      std::sort(picks.begin(), picks.end());
      for (int64_t j = 0; j < k; ++j) {
        mismatches += picks[j] != reference.data<int32_t>()[(l * tokens + t) * k + j];
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "routed expert ids differ from transformers";
}

void CheckFixture(const char* fixture) {
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                            Model::Load(testing::FixtureDir(fixture) + "/model"));
  Reference ref(fixture);
  ASSERT_TRUE(ref.ok());
  ForwardOptions options;
  options.return_routing = true;
  options.return_hidden = true;
  options.return_streams = ref.Has("mtp_logits");
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput out,
                            Forward(model, ref.Get("input_ids").view(), options));
  ExpectClose(fixture, "logits", out.logits, ref.Get("logits"), 1e-4);
  ExpectClose(fixture, "hidden", out.hidden, ref.Get("hidden"), 1e-4);
  ExpectSameRouting(out.routed_experts, ref.Get("routed_ids"));
  if (ref.Has("mtp_logits")) {
    V4RL_ASSERT_OK_AND_ASSIGN(const core::Tensor mtp,
                              MtpForward(model, out.streams.view(),
                                         ref.Get("mtp_next_ids").view()));
    ExpectClose(fixture, "mtp_logits", mtp, ref.Get("mtp_logits"), 1e-4);
  }
}

TEST(ForwardParityTest, MixedSmallMatchesTransformers) { CheckFixture("mixed_small"); }
TEST(ForwardParityTest, Ratios4And128MatchTransformers) { CheckFixture("ratios_4_128"); }
TEST(ForwardParityTest, DeepSeekFp8MatchesTransformers) { CheckFixture("deepseek_fp8"); }

}  // namespace
}  // namespace v4rl::model
