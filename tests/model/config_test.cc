// ModelConfig: both config.json formats, transformers' legacy keys, Validate's all-at-once
// errors, the flash / pro presets (layer schedules and parameter counts of spec §1 and §8).
#include "model/config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/params.h"
#include "tests/model/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using v4rl::testing::StatusIs;

// The hub config.json of V4-Flash (spec §1.1), legacy keys included.
nlohmann::json FlashHubJson() {
  nlohmann::json ratios = nlohmann::json::array({0, 0});
  for (int i = 0; i < 20; ++i) {
    ratios.push_back(4);
    ratios.push_back(128);
  }
  ratios.push_back(4);
  ratios.push_back(0);
  return {
      {"architectures", {"DeepseekV4ForCausalLM"}},
      {"model_type", "deepseek_v4"},
      {"vocab_size", 129280},
      {"hidden_size", 4096},
      {"num_hidden_layers", 43},
      {"num_attention_heads", 64},
      {"num_key_value_heads", 1},
      {"head_dim", 512},
      {"qk_rope_head_dim", 64},
      {"q_lora_rank", 1024},
      {"o_groups", 8},
      {"o_lora_rank", 1024},
      {"sliding_window", 128},
      {"compress_rope_theta", 160000},
      {"rope_theta", 10000},
      {"rope_scaling",
       {{"type", "yarn"},
        {"factor", 16},
        {"original_max_position_embeddings", 65536},
        {"beta_fast", 32},
        {"beta_slow", 1}}},
      {"max_position_embeddings", 1048576},
      {"compress_ratios", ratios},
      {"index_n_heads", 64},
      {"index_head_dim", 128},
      {"index_topk", 512},
      {"hc_mult", 4},
      {"hc_sinkhorn_iters", 20},
      {"hc_eps", 1e-6},
      {"rms_norm_eps", 1e-6},
      {"n_routed_experts", 256},
      {"n_shared_experts", 1},
      {"num_experts_per_tok", 6},
      {"moe_intermediate_size", 2048},
      {"num_hash_layers", 3},
      {"scoring_func", "sqrtsoftplus"},
      {"topk_method", "noaux_tc"},
      {"norm_topk_prob", true},
      {"routed_scaling_factor", 1.5},
      {"swiglu_limit", 10.0},
      {"num_nextn_predict_layers", 1},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"},
      {"quantization_config",
       {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}}}},
  };
}

// DeepSeek's inference config.json of V4-Flash (spec §1.2).
nlohmann::json FlashInferenceJson() {
  nlohmann::json j = {
      {"vocab_size", 129280}, {"dim", 4096}, {"moe_inter_dim", 2048}, {"n_layers", 43},
      {"n_hash_layers", 3}, {"n_heads", 64}, {"n_routed_experts", 256},
      {"n_shared_experts", 1}, {"n_activated_experts", 6}, {"score_func", "sqrtsoftplus"},
      {"route_scale", 1.5}, {"swiglu_limit", 10.0}, {"q_lora_rank", 1024}, {"head_dim", 512},
      {"rope_head_dim", 64}, {"o_groups", 8}, {"o_lora_rank", 1024}, {"window_size", 128},
      {"original_seq_len", 65536}, {"rope_theta", 10000}, {"rope_factor", 16},
      {"beta_fast", 32}, {"beta_slow", 1}, {"index_n_heads", 64}, {"index_head_dim", 128},
      {"index_topk", 512}, {"hc_mult", 4}, {"hc_sinkhorn_iters", 20}, {"dtype", "fp8"},
      {"scale_fmt", "ue8m0"}, {"expert_dtype", "fp4"}, {"compress_rope_theta", 160000},
      {"n_routed_experts_score", 128}};
  j["compress_ratios"] = FlashHubJson()["compress_ratios"];
  return j;
}

void ExpectSameArchitecture(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rope_head_dim, b.rope_head_dim);
  EXPECT_EQ(a.q_lora_rank, b.q_lora_rank);
  EXPECT_EQ(a.o_groups, b.o_groups);
  EXPECT_EQ(a.o_lora_rank, b.o_lora_rank);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.csa_compress_ratio, b.csa_compress_ratio);
  EXPECT_EQ(a.hca_compress_ratio, b.hca_compress_ratio);
  EXPECT_EQ(a.layer_types, b.layer_types);
  EXPECT_EQ(a.mlp_layer_types, b.mlp_layer_types);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.compress_rope_theta, b.compress_rope_theta);
  EXPECT_EQ(a.compress_yarn.enabled, b.compress_yarn.enabled);
  EXPECT_EQ(a.compress_yarn.factor, b.compress_yarn.factor);
  EXPECT_EQ(a.compress_yarn.original_max_position_embeddings,
            b.compress_yarn.original_max_position_embeddings);
  EXPECT_EQ(a.compress_yarn.beta_fast, b.compress_yarn.beta_fast);
  EXPECT_EQ(a.compress_yarn.beta_slow, b.compress_yarn.beta_slow);
  EXPECT_EQ(a.index_n_heads, b.index_n_heads);
  EXPECT_EQ(a.index_head_dim, b.index_head_dim);
  EXPECT_EQ(a.index_topk, b.index_topk);
  EXPECT_EQ(a.hc_mult, b.hc_mult);
  EXPECT_EQ(a.hc_sinkhorn_iters, b.hc_sinkhorn_iters);
  EXPECT_EQ(a.hc_eps, b.hc_eps);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.num_routed_experts, b.num_routed_experts);
  EXPECT_EQ(a.num_shared_experts, b.num_shared_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.routed_scaling_factor, b.routed_scaling_factor);
  EXPECT_EQ(a.swiglu_limit, b.swiglu_limit);
  EXPECT_EQ(a.num_mtp_layers, b.num_mtp_layers);
  EXPECT_EQ(a.mtp_layer_type, b.mtp_layer_type);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
}

TEST(ModelConfigTest, FlashPresetHasTheSpecSchedule) {
  const ModelConfig c = FlashConfig();
  V4RL_ASSERT_OK(c.Validate());
  ASSERT_EQ(c.layer_types.size(), 43u);
  EXPECT_EQ(c.layer_types[0], AttentionType::kSliding);
  EXPECT_EQ(c.layer_types[1], AttentionType::kSliding);
  int csa = 0, hca = 0;
  for (int i = 2; i < 43; ++i) {
    EXPECT_EQ(c.layer_types[i], i % 2 == 0 ? AttentionType::kCompressedSparse
                                           : AttentionType::kHeavilyCompressed)
        << "layer " << i;
    csa += c.layer_types[i] == AttentionType::kCompressedSparse;
    hca += c.layer_types[i] == AttentionType::kHeavilyCompressed;
  }
  EXPECT_EQ(csa, 21);
  EXPECT_EQ(hca, 20);
  EXPECT_EQ(c.layer_types[42], AttentionType::kCompressedSparse);
  EXPECT_EQ(c.num_hash_layers(), 3);
  EXPECT_EQ(c.mlp_layer_types[3], MlpType::kMoe);
  EXPECT_EQ(c.mtp_layer_type, AttentionType::kSliding);
}

TEST(ModelConfigTest, ProPresetHasTheSpecSchedule) {
  const ModelConfig c = ProConfig();
  V4RL_ASSERT_OK(c.Validate());
  ASSERT_EQ(c.layer_types.size(), 61u);
  int csa = 0, hca = 0;
  for (AttentionType t : c.layer_types) {
    csa += t == AttentionType::kCompressedSparse;
    hca += t == AttentionType::kHeavilyCompressed;
    EXPECT_NE(t, AttentionType::kSliding);
  }
  EXPECT_EQ(csa, 30);
  EXPECT_EQ(hca, 31);
  EXPECT_EQ(c.layer_types[0], AttentionType::kHeavilyCompressed);
  EXPECT_EQ(c.layer_types[1], AttentionType::kHeavilyCompressed);
  EXPECT_EQ(c.layer_types[2], AttentionType::kCompressedSparse);
  EXPECT_EQ(c.layer_types[59], AttentionType::kHeavilyCompressed);
  EXPECT_EQ(c.layer_types[60], AttentionType::kCompressedSparse);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.o_groups, 16);
  EXPECT_EQ(c.index_topk, 1024);
  EXPECT_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.num_routed_experts, 384);
  EXPECT_EQ(c.moe_intermediate_size, 3072);
}

// Spec §8: Flash 284.33B (+6.61B MTP), Pro 1573.0B (+25.8B MTP), from shapes only; within 0.5%.
TEST(ModelConfigTest, PresetParameterCountsMatchTheSpec) {
  const ParameterCount flash = CountParameters(FlashConfig());
  EXPECT_NEAR(flash.main / 1e9, 284.33, 284.33 * 0.005);
  EXPECT_NEAR(flash.mtp / 1e9, 6.61, 6.61 * 0.005);
  EXPECT_NEAR(flash.active / 1e9, 13.8, 13.8 * 0.02);
  const ParameterCount pro = CountParameters(ProConfig());
  EXPECT_NEAR(pro.main / 1e9, 1573.0, 1573.0 * 0.005);
  EXPECT_NEAR(pro.mtp / 1e9, 25.8, 25.8 * 0.005);
  EXPECT_NEAR(pro.active / 1e9, 49.8, 49.8 * 0.02);
  std::printf("flash %.2fB (+%.2fB MTP, %.2fB active); pro %.2fB (+%.2fB MTP, %.2fB active)\n",
              flash.main / 1e9, flash.mtp / 1e9, flash.active / 1e9, pro.main / 1e9,
              pro.mtp / 1e9, pro.active / 1e9);
}

TEST(ModelConfigTest, HubConfigWithLegacyKeysEqualsFlashPreset) {
  V4RL_ASSERT_OK_AND_ASSIGN(const ModelConfig c, ParseModelConfig(FlashHubJson(), "hub"));
  ExpectSameArchitecture(c, FlashConfig());
}

TEST(ModelConfigTest, InferenceConfigEqualsFlashPreset) {
  V4RL_ASSERT_OK_AND_ASSIGN(const ModelConfig c,
                            ParseModelConfig(FlashInferenceJson(), "inference"));
  ExpectSameArchitecture(c, FlashConfig());
}

TEST(ModelConfigTest, EmptyHfConfigTakesTransformersDefaults) {
  // Only what transformers' save_pretrained may omit; defaults are V4-Flash's sizes, but the
  // layer schedule falls back to transformers' HCA-first interleave (spec §1.3).
  V4RL_ASSERT_OK_AND_ASSIGN(const ModelConfig c,
                            ParseModelConfig(nlohmann::json::object(), "empty"));
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.rope_head_dim, 64);
  EXPECT_EQ(c.num_hash_layers(), 3);
  EXPECT_EQ(c.layer_types[0], AttentionType::kHeavilyCompressed);
  EXPECT_EQ(c.layer_types[2], AttentionType::kHeavilyCompressed);
  EXPECT_EQ(c.layer_types[3], AttentionType::kCompressedSparse);
  EXPECT_FALSE(c.compress_yarn.enabled);
}

TEST(ModelConfigTest, ParsesTransformersSavedConfig) {
  V4RL_ASSERT_OK_AND_ASSIGN(const ModelConfig c,
                            LoadModelConfig(testing::FixtureDir("mixed_small") + "/model"));
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rope_head_dim, 16);
  EXPECT_EQ(c.hca_compress_ratio, 8);
  EXPECT_EQ(c.layer_types,
            (std::vector<AttentionType>{AttentionType::kSliding,
                                        AttentionType::kCompressedSparse,
                                        AttentionType::kHeavilyCompressed}));
  EXPECT_EQ(c.mlp_layer_types,
            (std::vector<MlpType>{MlpType::kHashMoe, MlpType::kMoe, MlpType::kMoe}));
  EXPECT_TRUE(c.compress_yarn.enabled);
  EXPECT_EQ(c.compress_yarn.factor, 16.0);
  EXPECT_EQ(c.compress_yarn.original_max_position_embeddings, 65536);
}

TEST(ModelConfigTest, ParsesDeepSeekInferenceConfigWithOtherHcaRatio) {
  V4RL_ASSERT_OK_AND_ASSIGN(const ModelConfig c,
                            LoadModelConfig(testing::FixtureDir("deepseek_fp8") + "/model"));
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.hca_compress_ratio, 8);
  EXPECT_EQ(c.layer_types[1], AttentionType::kCompressedSparse);
  EXPECT_EQ(c.layer_types[2], AttentionType::kHeavilyCompressed);
  EXPECT_EQ(c.mtp_layer_type, AttentionType::kSliding);
  EXPECT_EQ(c.num_hash_layers(), 1);
}

TEST(ModelConfigTest, ValidateNamesEveryProblemAtOnce) {
  ModelConfig c = TinyConfig();
  c.num_heads = 3;  // not divisible by o_groups = 2
  c.layer_types.pop_back();
  c.scoring_func = "softmax";
  c.num_experts_per_tok = 9;
  c.rope_head_dim = 15;
  EXPECT_THAT(c.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("num_attention_heads (3) must be divisible by o_groups (2)"),
                             HasSubstr("layer_types has 3 entries, expected num_hidden_layers = 4"),
                             HasSubstr("scoring_func 'softmax'"),
                             HasSubstr("num_experts_per_tok (9)"), HasSubstr("rope dim (15"))));
}

TEST(ModelConfigTest, DeepSeekFormatListsAllMissingFields) {
  nlohmann::json j = FlashInferenceJson();
  j.erase("window_size");
  j.erase("rope_head_dim");
  j["n_heads"] = "many";
  EXPECT_THAT(ParseModelConfig(j, "inference.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("inference.json"), HasSubstr("'n_heads'"),
                             HasSubstr("missing required fields: rope_head_dim, window_size"))));
}

TEST(ModelConfigTest, RejectsBadHfFields) {
  nlohmann::json j = FlashHubJson();
  j["layer_types"] = {"sliding_attention", "full_attention"};
  j["rope_scaling"]["attention_factor"] = 1.277;
  j["compress_ratios"] = nullptr;
  EXPECT_THAT(ParseModelConfig(j, "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("layer_types[1]"), HasSubstr("attention_factor"))));
}

TEST(ModelConfigTest, TinyConfigIsValidAndCoversEveryLayerType) {
  const ModelConfig c = TinyConfig();
  V4RL_ASSERT_OK(c.Validate());
  EXPECT_EQ(c.layer_types.size(), 4u);
  EXPECT_GT(ModelParamSpecs(c, true).size(), 50u);
}

}  // namespace
}  // namespace v4rl::model
