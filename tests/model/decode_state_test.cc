// Decode state: allocated bytes against the accounting of model/decode_memory.h, and the errors
// of CreateDecodeState and DecodeStep (which leave every state unchanged).
#include "model/decode_state.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/decode.h"
#include "model/decode_memory.h"
#include "model/init.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::model {
namespace {

using ::testing::HasSubstr;
using v4rl::testing::StatusIs;

TEST(DecodeStateTest, BytesMatchTheAccountingInF32) {
  // Window rings, entries and indexer keys are f32 here (2x the bf16 accounting); the compressor
  // rows are f32 in both. MTP blocks have no decode state yet, so compare the main layers.
  for (int64_t capacity : {1, 7, 8, 100, 1000}) {
    const ModelConfig config = TinyConfig();
    V4RL_ASSERT_OK_AND_ASSIGN(const DecodeState state, CreateDecodeState(config, capacity));
    const DecodeMemoryReport report = ComputeDecodeMemory(config, capacity, KvStorage::kBf16);
    int64_t expected = 0;
    for (const DecodeStateBreakdown* b : {&report.sliding, &report.csa, &report.hca}) {
      expected += 2 * (b->window_bytes + b->compressed_bytes + b->indexer_bytes) +
                  b->compressor_state_bytes;
    }
    EXPECT_EQ(state.AllocatedBytes(), expected) << "capacity " << capacity;
    EXPECT_EQ(state.num_tokens, 0);
  }
}

TEST(DecodeStateTest, CapacityMustFitTheContext) {
  ModelConfig config = TinyConfig();
  config.max_position_embeddings = 64;
  EXPECT_THAT(CreateDecodeState(config, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("capacity 0")));
  EXPECT_THAT(CreateDecodeState(config, 65),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("max_position_embeddings = 64")));
  V4RL_EXPECT_OK(CreateDecodeState(config, 64));
}

TEST(DecodeStateTest, StepRejectsBadInputsWithoutChangingState) {
  const ModelConfig config = TinyConfig();
  const Model model = RandomModel(config, {.seed = 1});
  V4RL_ASSERT_OK_AND_ASSIGN(DecodeState a, CreateDecodeState(config, 4));
  V4RL_ASSERT_OK_AND_ASSIGN(DecodeState b, CreateDecodeState(config, 4));
  const std::vector<int32_t> good = {1, 2, 3};
  const std::vector<int32_t> bad = {1, 128};
  const std::vector<int32_t> empty;
  auto step = [&](std::vector<DecodeInput> inputs) { return DecodeStep(model, inputs); };
  EXPECT_THAT(step({}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no inputs")));
  EXPECT_THAT(step({{nullptr, good}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input 0 has no state")));
  EXPECT_THAT(step({{&a, good}, {&b, bad}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("input 1: token 1 = 128 is outside the vocabulary [0, 128)")));
  EXPECT_THAT(step({{&a, good}, {&b, empty}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input 1 has no tokens")));
  EXPECT_THAT(step({{&a, good}, {&a, good}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("reuses the state")));
  DecodeState other = a;
  other.layers.pop_back();
  EXPECT_THAT(step({{&other, good}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("state has 3 layers")));
  EXPECT_EQ(a.num_tokens, 0);
  EXPECT_EQ(b.num_tokens, 0);
  V4RL_ASSERT_OK(step({{&a, good}}));
  EXPECT_EQ(a.num_tokens, 3);
  EXPECT_THAT(step({{&a, good}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("3 tokens after 3 would exceed the state's capacity 4")));
  EXPECT_EQ(a.num_tokens, 3);
}

TEST(DecodeStateTest, StepReturnsLastLogitsAndRouting) {
  const ModelConfig config = TinyConfig();
  const Model model = RandomModel(config, {.scheme = InitScheme::kExercise, .seed = 2});
  V4RL_ASSERT_OK_AND_ASSIGN(DecodeState a, CreateDecodeState(config, 16));
  V4RL_ASSERT_OK_AND_ASSIGN(DecodeState b, CreateDecodeState(config, 16));
  const std::vector<int32_t> ta = {5, 6, 7, 8, 9}, tb = {10, 11};
  V4RL_ASSERT_OK_AND_ASSIGN(
      const DecodeStepOutput last,
      DecodeStep(model, {{&a, ta}, {&b, tb}}, {.return_routing = true}));
  EXPECT_TRUE(last.logits.view().SameShape({2, config.vocab_size}));
  ASSERT_EQ(static_cast<int64_t>(last.routed_experts.size()), config.num_layers);
  EXPECT_TRUE(last.routed_experts[0].view().SameShape({7, config.num_experts_per_tok}));
  // Layer 0 is a hash layer: its experts are tid2eid's row of each token.
  const int32_t* table = model.weights.layers[0].ffn.tid2eid.data<int32_t>();
  const int64_t k = config.num_experts_per_tok;
  for (int64_t j = 0; j < k; ++j) {
    EXPECT_EQ(last.routed_experts[0].data<int32_t>()[6 * k + j], table[11 * k + j]);
  }
  EXPECT_EQ(a.num_tokens, 5);
  EXPECT_EQ(b.num_tokens, 2);
}

}  // namespace
}  // namespace v4rl::model
