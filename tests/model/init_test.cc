// Random initialisation: transformers' rules (constants and std), determinism, distinct tid2eid
// experts, and that both schemes give a model whose forward runs.
#include "model/init.h"

#include <cmath>
#include <set>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::model {
namespace {

double StdDev(const core::Tensor& t) {
  double sum = 0, sum_sq = 0;
  for (float v : t.ToFloatVector()) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
  }
  const double n = static_cast<double>(t.numel());
  return std::sqrt(sum_sq / n - (sum / n) * (sum / n));
}

bool AllEqual(const core::Tensor& t, float value) {
  for (float v : t.ToFloatVector()) {
    if (v != value) return false;
  }
  return true;
}

TEST(InitTest, TransformersScheme) {
  const ModelConfig config = TinyConfig();
  const ModelWeights w = InitWeights(config, {.std = 0.02, .seed = 3});
  EXPECT_NEAR(StdDev(w.embed), 0.02, 0.002);
  EXPECT_NEAR(StdDev(w.layers[1].attn.wq_b), 0.02, 0.002);
  EXPECT_NEAR(StdDev(w.layers[1].ffn.w1), 0.02, 0.002);
  EXPECT_NEAR(StdDev(w.layers[1].hc_attn.fn), 0.02, 0.002);
  EXPECT_TRUE(AllEqual(w.norm, 1.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].attn.q_norm, 1.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].attn.compressor.norm, 1.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].hc_attn.base, 0.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].hc_attn.scale, 1.0f));
  EXPECT_TRUE(AllEqual(w.hc_head.scale, 1.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].attn.sink, 0.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].attn.compressor.ape, 0.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].attn.indexer.compressor.ape, 0.0f));
  EXPECT_TRUE(AllEqual(w.layers[1].ffn.bias, 0.0f));
  EXPECT_EQ(w.mtp.size(), 1u);
}

TEST(InitTest, DeterministicAndDistinctHashExperts) {
  const ModelConfig config = TinyConfig();
  const ModelWeights a = InitWeights(config, {.scheme = InitScheme::kExercise, .seed = 4});
  const ModelWeights b = InitWeights(config, {.scheme = InitScheme::kExercise, .seed = 4});
  const ModelWeights c = InitWeights(config, {.scheme = InitScheme::kExercise, .seed = 5});
  EXPECT_EQ(a.layers[2].attn.wkv.ToFloatVector(), b.layers[2].attn.wkv.ToFloatVector());
  EXPECT_NE(a.layers[2].attn.wkv.ToFloatVector(), c.layers[2].attn.wkv.ToFloatVector());
  EXPECT_FALSE(AllEqual(a.layers[1].attn.sink, 0.0f));
  const core::Tensor& table = a.layers[0].ffn.tid2eid;
  ASSERT_EQ(table.dtype(), core::DType::kI32);
  const int64_t k = config.num_experts_per_tok;
  std::set<int32_t> used;
  for (int64_t r = 0; r < config.vocab_size; ++r) {
    std::set<int32_t> row(table.data<int32_t>() + r * k, table.data<int32_t>() + (r + 1) * k);
    EXPECT_EQ(static_cast<int64_t>(row.size()), k) << "row " << r;
    for (int32_t e : row) {
      EXPECT_GE(e, 0);
      EXPECT_LT(e, config.num_routed_experts);
      used.insert(e);
    }
  }
  EXPECT_EQ(static_cast<int64_t>(used.size()), config.num_routed_experts);
}

TEST(InitTest, ModelsRunForward) {
  const ModelConfig config = TinyConfig();
  core::Tensor ids = core::Tensor::Zeros(core::DType::kI32, {1, 9});
  for (InitScheme scheme : {InitScheme::kTransformers, InitScheme::kExercise}) {
    const Model model = RandomModel(config, {.scheme = scheme, .seed = 6});
    V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput out, Forward(model, ids.view()));
    for (float v : out.logits.ToFloatVector()) ASSERT_TRUE(std::isfinite(v));
  }
}

}  // namespace
}  // namespace v4rl::model
