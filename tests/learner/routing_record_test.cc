// Rollout routing (position-major, every layer) -> the store's layer-major, learned-layers-only
// record over completion tokens: hand-built ids with a known answer, a real rollout's routing, and
// the errors that name the bad value.
#include "learner/routing_record.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/init.h"
#include "rollout/generate.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::learner {
namespace {

// 3 layers (hash, moe, moe), k = 2, 8 experts.
model::ModelConfig ThreeLayerConfig() {
  model::ModelConfig config;
  config.num_layers = 3;
  config.mlp_layer_types = {model::MlpType::kHashMoe, model::MlpType::kMoe, model::MlpType::kMoe};
  config.num_experts_per_tok = 2;
  config.num_routed_experts = 8;
  return config;
}

// The id of (position p, layer l, slot e) in the test's rollout routing.
int32_t Id(int64_t p, int64_t l, int64_t e) { return static_cast<int32_t>((p * 3 + l * 2 + e) % 8); }

TEST(RoutingRecord, ShapeSkipsHashLayers) {
  const store::RoutingShape shape = StoreRoutingShape(ThreeLayerConfig());
  EXPECT_EQ(shape.num_moe_layers, 2);
  EXPECT_EQ(shape.num_topk, 2);
  EXPECT_EQ(shape.num_experts, 8);
  model::ModelConfig all_hash = ThreeLayerConfig();
  all_hash.mlp_layer_types.assign(3, model::MlpType::kHashMoe);
  EXPECT_FALSE(StoreRoutingShape(all_hash).enabled());
}

TEST(RoutingRecord, CompletionTokenJTakesRowPromptLenMinusOnePlusJ) {
  const model::ModelConfig config = ThreeLayerConfig();
  const int64_t prompt_len = 4, n = 3, positions = prompt_len + n - 1;
  std::vector<int32_t> routed(positions * 3 * 2);
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t l = 0; l < 3; ++l) {
      for (int64_t e = 0; e < 2; ++e) routed[(p * 3 + l) * 2 + e] = Id(p, l, e);
    }
  }
  V4RL_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> stored,
                            CompletionRoutingForStore(config, routed, prompt_len, n));
  ASSERT_EQ(stored.size(), 2u * n * 2);
  for (int64_t s = 0; s < 2; ++s) {  // stored layer s = model layer s + 1
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t e = 0; e < 2; ++e) {
        EXPECT_EQ(stored[(s * n + j) * 2 + e], Id(prompt_len - 1 + j, s + 1, e))
            << "layer " << s + 1 << " token " << j << " slot " << e;
      }
    }
  }
}

TEST(RoutingRecord, RejectsWrongSizesAndIdsNamingTheValue) {
  const model::ModelConfig config = ThreeLayerConfig();
  std::vector<int32_t> routed(6 * 3 * 2, 1);
  EXPECT_THAT(CompletionRoutingForStore(config, routed, 4, 4).status().message(),
              ::testing::HasSubstr("36 expert ids, expected"));
  EXPECT_THAT(CompletionRoutingForStore(config, routed, 0, 7).status().message(),
              ::testing::HasSubstr("prompt_len 0"));
  routed[(3 * 3 + 2) * 2 + 1] = 8;  // position 3 = token 0's row, layer 2
  const absl::Status bad = CompletionRoutingForStore(config, routed, 4, 3).status();
  EXPECT_TRUE(absl::IsInvalidArgument(bad));
  EXPECT_THAT(bad.message(), ::testing::HasSubstr("position 3 layer 2: expert id 8"));
}

// A real rollout of the tiny model: the store record passes the store's own validation shape.
TEST(RoutingRecord, RealRolloutFitsTheStoreShape) {
  const model::Model model = model::RandomModel(
      model::TinyConfig(), {.scheme = model::InitScheme::kExercise, .seed = 5});
  rollout::GenerateOptions options;
  options.max_new_tokens = 5;
  V4RL_ASSERT_OK_AND_ASSIGN(std::vector<rollout::GenerationResult> results,
                            rollout::Generate(model, {{.prompt = {3, 9, 4}, .seed = 2}}, options));
  const rollout::GenerationResult& result = results[0];
  const store::RoutingShape shape = StoreRoutingShape(model.config);
  ASSERT_TRUE(shape.enabled());
  V4RL_ASSERT_OK_AND_ASSIGN(
      std::vector<uint16_t> stored,
      CompletionRoutingForStore(model.config, result.routed_experts, 3,
                                static_cast<int64_t>(result.tokens.size())));
  EXPECT_EQ(static_cast<int64_t>(stored.size()),
            shape.ids_per_token() * static_cast<int64_t>(result.tokens.size()));
  // The last learned layer's record of the last token is the last row's ids of that layer.
  const int64_t L = model.config.num_layers, k = model.config.num_experts_per_tok;
  const int64_t n = static_cast<int64_t>(result.tokens.size());
  const int64_t last_row = 3 + n - 2;
  for (int64_t e = 0; e < k; ++e) {
    EXPECT_EQ(stored[((shape.num_moe_layers - 1) * n + n - 1) * k + e],
              result.routed_experts[(last_row * L + L - 1) * k + e]);
  }
}

}  // namespace
}  // namespace v4rl::learner
