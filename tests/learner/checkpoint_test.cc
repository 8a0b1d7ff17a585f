// Checkpoints: layout, `latest`, trainer state round trip, replacement and pruning, and the
// errors for a missing or dangling `latest`.
#include "learner/checkpoint.h"

#include <filesystem>
#include <fstream>

#include "core/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::learner {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(Checkpoint, WritesLoadableDirectoryAndLatest) {
  const std::string dir = FreshDir("ckpt_basic");
  core::Tensor w = testing::RandomNormal({3, 4}, 1);
  core::Tensor m = testing::RandomNormal({3, 4}, 2);
  CheckpointContents contents;
  contents.config_json = R"({"model_type": "deepseek_v4"})";
  contents.weights = {{"layer.weight", w.view()}};
  contents.optimizer_state = {{"layer.weight.muon_momentum", m.view()}};
  contents.trainer_state = {.step = 7, .data_position = 56, .rng_seed = 99};
  V4RL_ASSERT_OK_AND_ASSIGN(std::string written, WriteCheckpoint(dir, contents));
  EXPECT_EQ(written, dir + "/step-00000007");
  V4RL_ASSERT_OK_AND_ASSIGN(std::string latest, LatestCheckpoint(dir));
  EXPECT_EQ(latest, written);
  V4RL_ASSERT_OK_AND_ASSIGN(TrainerState state, ReadTrainerState(latest));
  EXPECT_EQ(state.step, 7);
  EXPECT_EQ(state.data_position, 56);
  EXPECT_EQ(state.rng_seed, 99u);
  V4RL_ASSERT_OK_AND_ASSIGN(auto model, core::TensorDirectory::Open(latest + "/model.safetensors"));
  const auto* location = model->Find("layer.weight");
  ASSERT_NE(location, nullptr);
  EXPECT_TRUE(testing::AllClose(location->file->Read(*location->entry).view(), w.view(), {0, 0}));
  V4RL_ASSERT_OK_AND_ASSIGN(std::string config, core::ReadFile(latest + "/config.json"));
  EXPECT_THAT(config, HasSubstr("deepseek_v4"));
}

TEST(Checkpoint, KeepsLastNAndReplacesSameStep) {
  const std::string dir = FreshDir("ckpt_prune");
  core::Tensor w = testing::RandomNormal({2}, 3);
  CheckpointContents contents;
  contents.config_json = "{}";
  contents.weights = {{"w", w.view()}};
  for (int step = 1; step <= 4; ++step) {
    contents.trainer_state.step = step;
    V4RL_ASSERT_OK(WriteCheckpoint(dir, contents, /*keep_last=*/2).status());
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-00000002"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/step-00000003"));
  contents.trainer_state.data_position = 11;
  V4RL_ASSERT_OK(WriteCheckpoint(dir, contents, 2).status());  // step 4 again
  V4RL_ASSERT_OK_AND_ASSIGN(TrainerState state, ReadTrainerState(dir + "/step-00000004"));
  EXPECT_EQ(state.data_position, 11);
}

TEST(Checkpoint, MissingOrDanglingLatestIsAClearError) {
  const std::string dir = FreshDir("ckpt_errors");
  EXPECT_THAT(LatestCheckpoint(dir), StatusIs(absl::StatusCode::kNotFound, HasSubstr("no checkpoint")));
  std::filesystem::create_directories(dir);
  V4RL_ASSERT_OK(core::WriteFileAtomic(dir + "/latest", "step-00000009\n"));
  EXPECT_THAT(LatestCheckpoint(dir), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("missing")));
  V4RL_ASSERT_OK(core::WriteFileAtomic(dir + "/latest", "../etc\n"));
  EXPECT_THAT(LatestCheckpoint(dir), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("step-N")));
  std::filesystem::create_directories(dir + "/step-00000001");
  std::ofstream(dir + "/step-00000001/trainer_state.json") << R"({"step": "x"})";
  EXPECT_THAT(ReadTrainerState(dir + "/step-00000001"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'step' must be an integer")));
}

}  // namespace
}  // namespace v4rl::learner
