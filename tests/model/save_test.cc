// SaveModel round trip: a random tiny model saved and loaded back gives identical logits, and
// its config.json parses back to the same config.
#include "model/save.h"

#include <filesystem>

#include "core/json.h"
#include "gtest/gtest.h"
#include "model/forward.h"
#include "model/init.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::model {
namespace {

TEST(SaveModel, RoundTripGivesIdenticalLogits) {
  const ModelConfig config = TinyConfig();
  const Model original = RandomModel(config, {.scheme = InitScheme::kExercise, .seed = 3});
  const std::string dir = ::testing::TempDir() + "/saved_tiny";
  std::filesystem::remove_all(dir);
  const absl::Status saved = SaveModel(dir, config, original.weights);
  ASSERT_TRUE(saved.ok()) << saved;
  auto loaded = Model::Load(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->config.layer_types, config.layer_types);
  EXPECT_EQ(loaded->config.mlp_layer_types, config.mlp_layer_types);
  EXPECT_EQ(loaded->config.hca_compress_ratio, config.hca_compress_ratio);
  EXPECT_EQ(loaded->config.compress_yarn.factor, config.compress_yarn.factor);
  core::Tensor ids = core::Tensor::Empty(core::DType::kI32, {2, 19});
  for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int32_t>()[i] = (i * 7) % config.vocab_size;
  auto a = Forward(original, ids.view());
  auto b = Forward(*loaded, ids.view());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(testing::AllClose(b->logits.view(), a->logits.view(), {0, 0}));
}

TEST(SaveModel, ConfigJsonParsesBack) {
  for (const ModelConfig& config : {TinyConfig(), FlashConfig(), ProConfig()}) {
    auto parsed = ParseModelConfig(ModelConfigToJson(config), "saved config");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(ModelConfigToJson(*parsed), ModelConfigToJson(config));
  }
}

}  // namespace
}  // namespace v4rl::model
