// The per-token FLOP count of model/flops.h on two one-layer configs small enough to count by
// hand (the arithmetic is in the comments), and its use on the committed mid config.
#include "model/flops.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "model/config.h"

namespace v4rl::model {
namespace {

// H 8, q rank 4, 2 heads of 4, one output group of rank 2, window 4, 2 experts (k 1, 1 shared)
// of width 3, vocabulary 10, one residual stream.
ModelConfig SmallConfig(AttentionType type) {
  ModelConfig c;
  c.vocab_size = 10;
  c.hidden_size = 8;
  c.num_layers = 1;
  c.num_heads = 2;
  c.head_dim = 4;
  c.q_lora_rank = 4;
  c.o_groups = 1;
  c.o_lora_rank = 2;
  c.sliding_window = 4;
  c.csa_compress_ratio = 4;
  c.index_n_heads = 2;
  c.index_head_dim = 4;
  c.index_topk = 1;
  c.hc_mult = 1;
  c.num_routed_experts = 2;
  c.num_shared_experts = 1;
  c.num_experts_per_tok = 1;
  c.moe_intermediate_size = 3;
  c.layer_types = {type};
  c.mlp_layer_types = {MlpType::kMoe};
  return c;
}

TEST(ForwardFlops, SlidingLayerCountedByHand) {
  // Multiply-adds per token: mHC 2 x 3 x 8 = 48; attention 8·4 + 4·8 + 8·4 + 8·2 + 1·2·8 = 128;
  // router 8·2 = 16; experts 2 x 3 x 8 x 3 = 144; hc_head 8; head 80: 424 -> 848 FLOPs.
  // Core: keys 1, 2, 3, 4 at T = 4, mean 2.5: 8 x 2 x 2.5 = 40 -> 80 FLOPs.
  const ForwardFlops f = ForwardFlopsPerToken(SmallConfig(AttentionType::kSliding), 4);
  EXPECT_DOUBLE_EQ(f.projections, 848);
  EXPECT_DOUBLE_EQ(f.attention, 80);
  EXPECT_DOUBLE_EQ(f.indexer, 0);
  EXPECT_DOUBLE_EQ(f.training(), 3 * (848 + 80));
}

TEST(ForwardFlops, CompressedSparseLayerCountedByHand) {
  ModelConfig c = SmallConfig(AttentionType::kCompressedSparse);
  c.sliding_window = 2;
  // Projections: 424 + the overlapping compressor 2 x 8 x 8 = 128 -> 552 -> 1104 FLOPs.
  // Core at T = 8: window keys 1,2,2,2,2,2,2,2 (15), visible entries floor((t+1)/4)
  // 0,0,0,1,1,1,1,2, top-1 of them 0,0,0,1,1,1,1,1 (5): mean 2.5 keys -> 40 -> 80 FLOPs.
  // Indexer: 4·2·4 + 8·2 + 2·8·8 = 176, scores 2·4 x mean visible 0.75 = 6: 182 -> 364 FLOPs.
  const ForwardFlops f = ForwardFlopsPerToken(c, 8);
  EXPECT_DOUBLE_EQ(f.projections, 1104);
  EXPECT_DOUBLE_EQ(f.attention, 80);
  EXPECT_DOUBLE_EQ(f.indexer, 364);
  EXPECT_DOUBLE_EQ(f.forward(), 1104 + 80 + 364);
  EXPECT_DOUBLE_EQ(f.training(), 3 * (1104 + 80) + 364);
  EXPECT_NE(ForwardFlopsFormula().find("keys(t)"), std::string::npos);
}

TEST(ForwardFlops, MidConfigIsDominatedByItsActiveParameters) {
  // The matmul FLOPs of a config are about twice its active parameters per token (the
  // embedding, norms and biases are the difference).
  const char* root = std::getenv("V4RL_SOURCE_DIR");
  auto config = LoadModelConfig(std::string(root ? root : ".") + "/configs/models/mid.json");
  ASSERT_TRUE(config.ok()) << config.status();
  const ForwardFlops f = ForwardFlopsPerToken(*config, 4096);
  std::printf(
      "[measured] mid config, T = 4096: forward %.3f GFLOP/token (projections %.3f, "
      "attention %.3f, indexer %.3f), training %.3f GFLOP/token\n",
      f.forward() / 1e9, f.projections / 1e9, f.attention / 1e9, f.indexer / 1e9,
      f.training() / 1e9);
  const double active = static_cast<double>(CountParameters(*config).active);
  const double embedding = static_cast<double>(config->vocab_size) * config->hidden_size;
  EXPECT_NEAR(f.projections / (2 * (active - embedding)), 1.0, 0.02);
  EXPECT_GT(f.attention, 0);
  EXPECT_GT(f.indexer, 0);
}

}  // namespace
}  // namespace v4rl::model
