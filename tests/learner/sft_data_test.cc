// Synthetic tasks (determinism, disjoint splits, solvability) and the JSONL dataset + batching.
#include "learner/sft_data.h"

#include <fstream>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::learner {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

std::string PromptText(const SftExample& e) {
  return DecodeChars(std::vector<int32_t>(e.prompt.begin() + 1, e.prompt.end()));
}

TEST(SyntheticTasks, DeterministicSolvableAndSplitsDisjoint) {
  for (const char* name : {"addition", "reverse"}) {
    SyntheticTaskSpec spec{.name = name, .min_digits = 1, .max_digits = 2, .seed = 5};
    V4RL_ASSERT_OK(spec.Validate());
    std::set<std::string> train_prompts;
    for (int i = 0; i < 300; ++i) {
      const SftExample e = MakeSyntheticExample(spec, TaskSplit::kTrain, i);
      EXPECT_EQ(e.prompt[0], kBosId);
      EXPECT_EQ(e.completion.back(), kEosId);
      const std::string answer =
          DecodeChars(std::vector<int32_t>(e.completion.begin(), e.completion.end() - 1));
      V4RL_ASSERT_OK_AND_ASSIGN(std::string solved, SolveSyntheticPrompt(spec, PromptText(e)));
      EXPECT_EQ(answer, solved) << PromptText(e);
      train_prompts.insert(PromptText(e));
    }
    for (int i = 0; i < 50; ++i) {
      const SftExample e = MakeSyntheticExample(spec, TaskSplit::kEval, i);
      EXPECT_EQ(train_prompts.count(PromptText(e)), 0u) << PromptText(e);
    }
    EXPECT_EQ(MakeSyntheticExample(spec, TaskSplit::kTrain, 7).prompt,
              MakeSyntheticExample(spec, TaskSplit::kTrain, 7).prompt);
  }
  EXPECT_THAT(SyntheticTaskSpec{.name = "sorting"}.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("name must be")));
  const SyntheticTaskSpec inverted_range{.min_digits = 3, .max_digits = 2};
  EXPECT_THAT(inverted_range.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("min_digits")));
  EXPECT_THAT(EncodeChars("A"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'A'")));
}

TEST(SftBatch, MasksExactlyTheCompletionTargets) {
  const SftExample a{{0, 5, 6}, {7, 1}};
  const SftExample b{{0, 5}, {8, 1}};
  const SftBatch batch = MakeSftBatch({&a, &b});
  ASSERT_EQ(batch.input_ids.size(1), 5);
  EXPECT_EQ(batch.num_target_tokens, 4);
  const std::vector<float> mask = batch.loss_mask.ToFloatVector();
  EXPECT_EQ(mask, (std::vector<float>{0, 0, 1, 1, 0, /*row b*/ 0, 1, 1, 0, 0}));
  EXPECT_EQ(batch.input_ids.data<int32_t>()[9], kPadId);
}

TEST(SftJsonl, ReadsAndReportsLineAndField) {
  const std::string path = ::testing::TempDir() + "/sft.jsonl";
  std::ofstream(path) << R"({"prompt_ids": [0, 4], "completion_ids": [5, 1]})" "\n\n"
                      << R"({"prompt_ids": [0], "completion_ids": [3, 1]})" "\n";
  V4RL_ASSERT_OK_AND_ASSIGN(auto examples, ReadSftJsonl(path, 10));
  ASSERT_EQ(examples.size(), 2u);
  EXPECT_EQ(examples[1].completion, (std::vector<int32_t>{3, 1}));
  std::ofstream(path) << R"({"prompt_ids": [0, 4], "completion_ids": [5, 1]})" "\n"
                      << R"({"prompt_ids": [0, 12], "completion_ids": [1]})" "\n";
  EXPECT_THAT(ReadSftJsonl(path, 10), StatusIs(absl::StatusCode::kInvalidArgument,
                                               HasSubstr("sft.jsonl:2: prompt_ids[1] = 12")));
  std::ofstream(path) << R"({"prompt_ids": [0]})" "\n";
  EXPECT_THAT(ReadSftJsonl(path, 10), StatusIs(absl::StatusCode::kInvalidArgument,
                                               HasSubstr("'completion_ids' must be an array")));
  std::ofstream(path) << "not json\n";
  EXPECT_THAT(ReadSftJsonl(path, 10),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sft.jsonl:1: malformed")));
  EXPECT_THAT(ReadSftJsonl(path + ".missing", 10), StatusIs(absl::StatusCode::kNotFound, HasSubstr("cannot open")));
}

}  // namespace
}  // namespace v4rl::learner
