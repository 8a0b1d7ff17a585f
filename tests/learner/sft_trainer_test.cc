// SFT end to end on a tiny char-level V4 model: the loss falls, a resumed run continues
// bit-identically, and bad configs are rejected with every problem named.
#include "learner/sft_trainer.h"

#include <cstdlib>
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/forward.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::learner {
namespace {

SftOptions TinyOptions(const std::string& name, int64_t steps) {
  SftOptions options;
  options.run_dir = ::testing::TempDir() + "/" + name;
  options.init_config =
      std::string(std::getenv("V4RL_SOURCE_DIR")) + "/configs/models/tiny_char.json";
  options.synthetic = {.name = "addition", .min_digits = 1, .max_digits = 1, .seed = 3};
  options.steps = steps;
  options.batch_size = 8;
  options.schedule = {.peak_lr = 3e-3, .end_lr = 3e-4, .warmup_steps = 2};
  options.eval_examples = 8;
  options.quiet = true;
  return options;
}

TEST(Sft, LossFallsOnSyntheticAddition) {
  SftOptions options = TinyOptions("sft_loss_falls", 30);
  std::filesystem::remove_all(options.run_dir);
  V4RL_ASSERT_OK_AND_ASSIGN(SftSummary summary, RunSft(options));
  ASSERT_EQ(summary.losses.size(), 30u);
  const double first = (summary.losses[0] + summary.losses[1]) / 2;
  const double last = (summary.losses[28] + summary.losses[29]) / 2;
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  EXPECT_TRUE(std::filesystem::exists(options.run_dir + "/summary.json"));
  EXPECT_TRUE(std::filesystem::exists(options.run_dir + "/checkpoints/step-00000030/config.json"));
  // The final checkpoint is a model directory.
  EXPECT_TRUE(model::Model::Load(options.run_dir + "/checkpoints/step-00000030").ok());
}

TEST(Sft, ResumedRunContinuesBitIdentically) {
  SftOptions full = TinyOptions("sft_full", 12);
  std::filesystem::remove_all(full.run_dir);
  V4RL_ASSERT_OK_AND_ASSIGN(SftSummary uninterrupted, RunSft(full));

  SftOptions part = TinyOptions("sft_part", 12);
  part.checkpoint_every = 3;
  part.max_steps_per_run = 6;
  std::filesystem::remove_all(part.run_dir);
  V4RL_ASSERT_OK(RunSft(part).status());
  part.max_steps_per_run = 0;
  V4RL_ASSERT_OK_AND_ASSIGN(SftSummary resumed, RunSft(part));
  EXPECT_EQ(resumed.resumed_from, 6);
  ASSERT_EQ(resumed.losses.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(resumed.losses[i], uninterrupted.losses[6 + i]) << i;
  auto a = model::Model::Load(full.run_dir + "/checkpoints/step-00000012");
  auto b = model::Model::Load(part.run_dir + "/checkpoints/step-00000012");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(testing::AllClose(b->weights.layers[1].attn.wq_a.view(),
                                a->weights.layers[1].attn.wq_a.view(), {0, 0}));
}

TEST(Sft, InvalidOptionsNameEveryProblem) {
  SftOptions options;
  options.steps = 0;
  options.batch_size = -1;
  options.recompute = true;  // with a gradient backend: CPU-only option
  options.gradient_backend =
      [](const model::Model&) -> absl::StatusOr<std::unique_ptr<SftGradientBackend>> {
    return MakeCpuSftGradientBackend(false);
  };
  EXPECT_THAT(RunSft(options).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::AllOf(::testing::HasSubstr("run_dir"),
                                                 ::testing::HasSubstr("model_dir and init_config"),
                                                 ::testing::HasSubstr("steps must be"),
                                                 ::testing::HasSubstr("batch_size"),
                                                 ::testing::HasSubstr("recompute"))));
}

}  // namespace
}  // namespace v4rl::learner
