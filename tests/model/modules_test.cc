// Model-level properties on hand-derived cases and random tiny models: the YaRN table of spec §8,
// compressed entries that depend only on complete windows, causality of the whole forward
// (compressed visibility and indexer masking included), batch independence, routing rules.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "model/compressor.h"
#include "model/forward.h"
#include "model/moe.h"
#include "model/rope.h"
#include "tests/model/random_model.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

TEST(RopeTableTest, CompressedLayerYarnTableMatchesSpec) {
  const ModelConfig flash = FlashConfig();
  const std::vector<float> theta =
      RopeInvFreq(flash.compress_rope_theta, flash.rope_head_dim, &flash.compress_yarn);
  ASSERT_EQ(theta.size(), 32u);
  const std::vector<std::pair<int, double>> expected = {
      {0, 1.0},           {1, 0.68765602},      {2, 0.47287080},     {3, 0.32517246},
      {29, 1.2012856e-6}, {30, 8.2607130e-7}, {31, 5.6805290e-7}};
  for (const auto& [i, value] : expected) {
    EXPECT_NEAR(theta[i], value, value * 2e-7) << "theta'_" << i;
  }
  // Dims up to low = 15 keep θ_i; from high = 25 on they are θ_i / 16.
  const std::vector<float> plain = RopeInvFreq(flash.compress_rope_theta, 64, nullptr);
  EXPECT_EQ(theta[15], plain[15]);
  EXPECT_LT(theta[16], plain[16]);
  EXPECT_NEAR(theta[25], plain[25] / 16, plain[25] * 1e-6);
  // Sliding layers: plain RoPE with rope_theta.
  const RopeTable main = MakeRopeTable(flash, AttentionType::kSliding);
  EXPECT_NEAR(main.inv_freq()[1], std::pow(10000.0, -2.0 / 64), 1e-7);
}

TEST(RopeTableTest, AnglesAreFloatPositionTimesFrequency) {
  const RopeTable table(10000.0, 4, nullptr);
  float cos[4], sin[4];
  table.Fill(3, 2, 2, cos, sin);  // positions 3 and 5
  EXPECT_FLOAT_EQ(cos[0], std::cos(3.0f));
  EXPECT_FLOAT_EQ(sin[3], std::sin(5.0f * 0.01f));
}

TEST(CompressorTest, EntriesDependOnlyOnCompleteWindows) {
  // Sequence lengths around the window boundaries t = m - 1, m, 2m - 1, 2m (m = 4): the number of
  // entries is floor(T / m) and entry 0 never changes once it exists.
  const ModelConfig config = TinyConfig();
  const Model model = testing::RandomModel(config, 5);
  const CompressorWeights& w = model.weights.layers[1].attn.compressor;  // CSA layer
  const Tensor x = v4rl::testing::RandomNormal({8, config.hidden_size}, 6);
  std::vector<Tensor> entries;
  for (int64_t len : {3, 4, 7, 8}) {
    CompressorActivations acts;
    CompressorForward(w, 4, /*overlap=*/true, model.compress_rope, 1e-6f, 1, len,
                      x.view().Slice(0, 0, len), &acts);
    EXPECT_EQ(acts.entries.size(1), len / 4) << "T = " << len;
    entries.push_back(acts.entries);
  }
  const int64_t d = config.head_dim;
  for (int idx : {2, 3}) {
    EXPECT_TRUE(std::equal(entries[1].data<float>(), entries[1].data<float>() + d,
                           entries[idx].data<float>()));
  }
  // Entry 1 mixes window 0's series A with window 1's series B: it changes with token 0.
  Tensor x2 = Tensor::CopyOf(x.view());
  x2.data<float>()[0] += 1.0f;
  CompressorActivations changed;
  CompressorForward(w, 4, true, model.compress_rope, 1e-6f, 1, 8, x2.view(), &changed);
  EXPECT_NE(changed.entries.data<float>()[d + 3], entries[3].data<float>()[d + 3]);
}

TEST(ForwardTest, IsCausalAcrossEveryLayerType) {
  // Logits of a prefix equal the first positions of the full sequence: nothing (window, CSA
  // top-k, HCA entries, indexer) looks ahead, and T = 8k + 1 crosses every window boundary.
  ModelConfig config = TinyConfig();
  config.index_topk = 2;
  const Model model = testing::RandomModel(config, 7);
  const int64_t seq_len = 33;
  Tensor ids = Tensor::Empty(DType::kI32, {1, seq_len});
  for (int64_t t = 0; t < seq_len; ++t) ids.data<int32_t>()[t] = (t * 37 + 11) % config.vocab_size;
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput full, Forward(model, ids.view()));
  for (int64_t prefix : {1, 3, 4, 8, 9, 20}) {
    V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput part,
                              Forward(model, ids.view().Slice(1, 0, prefix)));
    const int64_t n = prefix * config.vocab_size;
    EXPECT_TRUE(std::equal(part.logits.data<float>(), part.logits.data<float>() + n,
                           full.logits.data<float>()))
        << "prefix " << prefix;
  }
}

TEST(ForwardTest, BatchRowsAreIndependent) {
  const ModelConfig config = TinyConfig();
  const Model model = testing::RandomModel(config, 8);
  Tensor ids = Tensor::Empty(DType::kI64, {2, 12});
  for (int64_t i = 0; i < 24; ++i) ids.data<int64_t>()[i] = (i * 53 + 7) % config.vocab_size;
  ForwardOptions options;
  options.return_routing = true;
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput both, Forward(model, ids.view(), options));
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput second,
                            Forward(model, ids.view().Slice(0, 1, 2), options));
  const int64_t n = 12 * config.vocab_size;
  EXPECT_TRUE(std::equal(second.logits.data<float>(), second.logits.data<float>() + n,
                         both.logits.data<float>() + n));
  EXPECT_EQ(both.routed_experts.size(), static_cast<size_t>(config.num_layers));
  EXPECT_TRUE(both.routed_experts[0].view().SameShape({2, 12, config.num_experts_per_tok}));
}

TEST(ForwardTest, IndexReplayUsesTheGivenPicks) {
  // TinyConfig: layers sliding, CSA, HCA, CSA. Replaying the forward's own picks reproduces it
  // exactly; other picks change the logits; wrong shapes and non-CSA replays are refused.
  const ModelConfig config = TinyConfig();
  const Model model = testing::RandomModel(config, 10);
  Tensor ids = Tensor::Empty(DType::kI32, {2, 16});
  for (int64_t i = 0; i < 32; ++i) ids.data<int32_t>()[i] = (i * 31 + 5) % config.vocab_size;
  ForwardOptions options;
  options.save_activations = true;
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput base, Forward(model, ids.view(), options));
  std::vector<Tensor> picks;
  for (const BlockActivations& acts : base.blocks) picks.push_back(acts.attn.indexer.topk);
  ForwardOptions replay;
  for (const Tensor& p : picks) {
    replay.index_replay.push_back(p.defined() ? p.view() : core::TensorView());
  }
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput same, Forward(model, ids.view(), replay));
  EXPECT_TRUE(std::equal(same.logits.data<float>(), same.logits.data<float>() + same.logits.numel(),
                         base.logits.data<float>()));
  // Only the first visible entry for every query of layer 1.
  Tensor first = Tensor::CopyOf(picks[1].view());
  for (int64_t i = 0; i < first.numel(); ++i) {
    if (i % first.size(2) != 0) first.data<int32_t>()[i] = -1;
  }
  replay.index_replay[1] = first.view();
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput other, Forward(model, ids.view(), replay));
  EXPECT_FALSE(std::equal(other.logits.data<float>(),
                          other.logits.data<float>() + other.logits.numel(),
                          base.logits.data<float>()));
  replay.index_replay[0] = picks[1].view();  // layer 0 is sliding: no indexer
  EXPECT_THAT(Forward(model, ids.view(), replay),
              v4rl::testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                      ::testing::HasSubstr("index_replay[0] must be empty")));
  replay.index_replay[0] = core::TensorView();
  replay.index_replay[1] = picks[1].view().Slice(1, 0, 8);
  EXPECT_THAT(Forward(model, ids.view(), replay),
              v4rl::testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                      ::testing::HasSubstr("index_replay[1] must be")));
}

TEST(ForwardTest, RejectsBadTokenIds) {
  const Model model = testing::RandomModel(TinyConfig(), 9);
  Tensor ids = Tensor::Zeros(DType::kI32, {1, 4});
  ids.data<int32_t>()[2] = 128;
  EXPECT_THAT(Forward(model, ids.view()),
              v4rl::testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                      ::testing::HasSubstr("input_ids[0, 2] = 128")));
  const Tensor floats = Tensor::Zeros(DType::kF32, {1, 4});
  EXPECT_FALSE(Forward(model, floats.view()).ok());
  EXPECT_THAT(MtpForward(model, floats.view(), ids.view(), 3),
              v4rl::testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                      ::testing::HasSubstr("MTP block 3")));
}

TEST(RouterTest, HashLayersUseTheTableAndGateScores) {
  const ModelConfig config = TinyConfig();
  const Model model = testing::RandomModel(config, 10);
  const MoeWeights& w = model.weights.layers[0].ffn;  // hash layer
  ASSERT_EQ(model.weights.layers[0].mlp_type, MlpType::kHashMoe);
  const Tensor x = v4rl::testing::RandomNormal({3, config.hidden_size}, 11);
  Tensor ids = Tensor::Empty(DType::kI32, {3});
  for (int i = 0; i < 3; ++i) ids.data<int32_t>()[i] = 5 * i + 1;
  MoeActivations acts;
  RouteTokens(w, MlpType::kHashMoe, config, x.view(), ids.view(), &acts);
  const int64_t k = config.num_experts_per_tok, e = config.num_routed_experts;
  for (int t = 0; t < 3; ++t) {
    float sum = 0;
    for (int j = 0; j < k; ++j) {
      const int32_t expert = acts.topk_idx.data<int32_t>()[t * k + j];
      EXPECT_EQ(expert, w.tid2eid.data<int32_t>()[(5 * t + 1) * k + j]);
      sum += acts.scores.data<float>()[t * e + expert];
    }
    for (int j = 0; j < k; ++j) {
      const int32_t expert = acts.topk_idx.data<int32_t>()[t * k + j];
      EXPECT_NEAR(acts.topk_weight.data<float>()[t * k + j],
                  acts.scores.data<float>()[t * e + expert] / sum * 1.5f, 1e-6);
    }
  }
}

TEST(RouterTest, BiasSelectsButDoesNotWeight) {
  ModelConfig config = TinyConfig();
  const Model model = testing::RandomModel(config, 12);
  MoeWeights w = model.weights.layers[1].ffn;
  // A huge bias on experts 6 and 7 forces their selection; weights still use the plain scores.
  w.bias = Tensor::Zeros(DType::kF32, {config.num_routed_experts});
  w.bias.data<float>()[6] = 100;
  w.bias.data<float>()[7] = 90;
  const Tensor x = v4rl::testing::RandomNormal({2, config.hidden_size}, 13);
  const Tensor ids = Tensor::Zeros(DType::kI32, {2});
  MoeActivations acts;
  RouteTokens(w, MlpType::kMoe, config, x.view(), ids.view(), &acts);
  for (int t = 0; t < 2; ++t) {
    EXPECT_EQ(acts.topk_idx.data<int32_t>()[t * 2], 6);
    EXPECT_EQ(acts.topk_idx.data<int32_t>()[t * 2 + 1], 7);
    const float s6 = acts.scores.data<float>()[t * 8 + 6], s7 = acts.scores.data<float>()[t * 8 + 7];
    EXPECT_NEAR(acts.topk_weight.data<float>()[t * 2], s6 / (s6 + s7) * 1.5f, 1e-6);
  }
}

}  // namespace
}  // namespace v4rl::model
