// Runs `v4rl generate` on the mixed_small fixture: greedy tokens equal transformers' generate,
// right-padded prompts with `lengths`, sampled output equal to rollout::Generate's (padding after
// a stop token with -1 and logprob 0), and one-line errors with non-zero exits on bad input.
#include <cstdlib>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "gtest/gtest.h"
#include "rollout/generate.h"
#include "tests/testing/run_command.h"

namespace v4rl {
namespace {

using core::DType;
using core::Tensor;
using testing::CommandResult;
using testing::RunV4rl;

std::string Fixture(const std::string& file) {
  const char* root = std::getenv("V4RL_SOURCE_DIR");
  return std::string(root ? root : ".") + "/tests/data/model/mixed_small/" + file;
}

Tensor ReadTensor(const std::string& path, const std::string& name) {
  auto file = core::SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return Tensor();
  const core::SafetensorsEntry* entry = (*file)->Find(name);
  EXPECT_NE(entry, nullptr) << name;
  return entry ? (*file)->Read(*entry) : Tensor();
}

class GenerateCommandTest : public ::testing::Test {
 protected:
  // IN: the fixture's two decode prompts (37 tokens) plus row 0 cut to 12 tokens, padded with
  // an out-of-vocabulary id that `lengths` must hide.
  void SetUp() override {
    const Tensor ids = ReadTensor(Fixture("reference.safetensors"), "input_ids");  // [2, 40]
    Tensor prompts = Tensor::Empty(DType::kI64, {3, kPromptLen});
    for (int64_t b = 0; b < 3; ++b) {
      for (int64_t t = 0; t < kPromptLen; ++t) {
        const bool pad = b == 2 && t >= kShortLen;
        prompts.data<int64_t>()[b * kPromptLen + t] =
            pad ? 100000 : ids.data<int64_t>()[(b % 2) * 40 + t];
      }
    }
    Tensor lengths = Tensor::Empty(DType::kI32, {3});
    lengths.data<int32_t>()[0] = lengths.data<int32_t>()[1] = kPromptLen;
    lengths.data<int32_t>()[2] = kShortLen;
    input_ = ::testing::TempDir() + "/generate_in.safetensors";
    output_ = ::testing::TempDir() + "/generate_out.safetensors";
    ASSERT_TRUE(core::WriteSafetensors(input_, {{"input_ids", prompts.view()},
                                                {"lengths", lengths.view()}}).ok());
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t* row = prompts.data<int64_t>() + b * kPromptLen;
      requests_.push_back({std::vector<int32_t>(row, row + (b == 2 ? kShortLen : kPromptLen)),
                           static_cast<uint64_t>(5 + b)});
    }
  }

  std::string Args(const std::string& rest) const {
    return "generate --model " + Fixture("model") + " --input " + input_ + " --output " + output_ +
           " " + rest;
  }

  static constexpr int64_t kPromptLen = 37;
  static constexpr int64_t kShortLen = 12;
  std::string input_, output_;
  std::vector<rollout::GenerationRequest> requests_;
};

TEST_F(GenerateCommandTest, GreedyMatchesTransformers) {
  const CommandResult run = RunV4rl(Args("--max-new-tokens 12 --greedy --prefill-chunk 5"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const Tensor tokens = ReadTensor(output_, "tokens");
  const Tensor expected = ReadTensor(Fixture("reference.safetensors"), "decode_tokens");
  ASSERT_EQ(tokens.dtype(), DType::kI32);
  ASSERT_TRUE(tokens.view().SameShape({3, 12})) << tokens.view().DebugString();
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(tokens.data<int32_t>()[i], expected.data<int64_t>()[i]);
  const Tensor lengths = ReadTensor(output_, "lengths");
  for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(lengths.data<int32_t>()[b], 12);
  EXPECT_TRUE(ReadTensor(output_, "logprobs").view().SameShape({3, 12}));
  EXPECT_TRUE(ReadTensor(output_, "routed_experts").view().SameShape({3, kPromptLen + 11, 3, 2}));
}

TEST_F(GenerateCommandTest, SampledOutputEqualsTheLibraryAndPadsAfterStop) {
  // A stop token that row 0 samples early, found from an unstopped run.
  ASSERT_EQ(RunV4rl(Args("--max-new-tokens 10 --temperature 0.8 --top-p 0.9 --top-k 20 --seed 5"))
                .exit_code, 0);
  const int32_t stop = ReadTensor(output_, "tokens").data<int32_t>()[2];
  const CommandResult run = RunV4rl(Args("--max-new-tokens 10 --temperature 0.8 --top-p 0.9 "
                                     "--top-k 20 --seed 5 --stop-tokens " +
                                     std::to_string(stop)));
  ASSERT_EQ(run.exit_code, 0) << run.output;

  auto model = model::Model::Load(Fixture("model"));
  ASSERT_TRUE(model.ok()) << model.status();
  rollout::GenerateOptions options;
  options.max_new_tokens = 10;
  options.sampling = {.temperature = 0.8f, .top_p = 0.9f, .top_k = 20};
  options.stop_tokens = {stop};
  auto results = rollout::Generate(*model, requests_, options);
  ASSERT_TRUE(results.ok()) << results.status();
  const Tensor tokens = ReadTensor(output_, "tokens");
  const Tensor logprobs = ReadTensor(output_, "logprobs");
  const Tensor sampling = ReadTensor(output_, "sampling_logprobs");
  const Tensor kept = ReadTensor(output_, "kept_counts");
  const Tensor lengths = ReadTensor(output_, "lengths");
  for (int64_t b = 0; b < 3; ++b) {
    const rollout::GenerationResult& r = (*results)[b];
    const int64_t n = static_cast<int64_t>(r.tokens.size());
    EXPECT_EQ(lengths.data<int32_t>()[b], n);
    for (int64_t j = 0; j < 10; ++j) {
      const int64_t i = b * 10 + j;
      EXPECT_EQ(tokens.data<int32_t>()[i], j < n ? r.tokens[j] : -1) << b << " " << j;
      EXPECT_EQ(logprobs.data<float>()[i], j < n ? r.model_logprobs[j] : 0.0f);
      EXPECT_EQ(sampling.data<float>()[i], j < n ? r.sampling_logprobs[j] : 0.0f);
      EXPECT_EQ(kept.data<int32_t>()[i], j < n ? r.kept_counts[j] : 0);
    }
  }
  EXPECT_EQ(lengths.data<int32_t>()[0], 3);
}

TEST_F(GenerateCommandTest, BadInputsFailWithOneLine) {
  auto expect_error = [&](const std::string& rest, int code, const std::string& text) {
    const CommandResult run = RunV4rl(Args(rest));
    EXPECT_EQ(run.exit_code, code) << rest << "\n" << run.output;
    EXPECT_NE(run.output.find(text), std::string::npos) << rest << "\n" << run.output;
  };
  expect_error("--greedy", 2, "--max-new-tokens are required");
  expect_error("--max-new-tokens 4 --greedy --temperature 0.5", 2, "--greedy excludes");
  expect_error("--max-new-tokens 0 --greedy", 2, "max_new_tokens must be >= 1");
  expect_error("--max-new-tokens 4 --temperature 0", 2, "temperature must be finite and > 0");
  expect_error("--max-new-tokens 4 --stop-tokens 1,x", 2, "--stop-tokens must be");
  expect_error("--max-new-tokens 2000000 --greedy", 1, "exceeds the model's context");
  expect_error("--max-new-tokens 4 --greedy --no-cuda-graphs", 2,
               "--no-cuda-graphs needs --device cuda");

  // Without `lengths` the padding ids of row 2 are read as tokens.
  const Tensor ids = ReadTensor(input_, "input_ids");
  ASSERT_TRUE(core::WriteSafetensors(input_, {{"input_ids", ids.view()}}).ok());
  expect_error("--max-new-tokens 4 --greedy", 1,
               "request 2: prompt[12] = 100000 is outside the vocabulary [0, 128)");
  Tensor lengths = Tensor::Zeros(DType::kI64, {3});
  ASSERT_TRUE(core::WriteSafetensors(input_, {{"input_ids", ids.view()},
                                              {"lengths", lengths.view()}}).ok());
  expect_error("--max-new-tokens 4 --greedy", 1, "lengths[0] = 0 is outside [1, 37]");
}

}  // namespace
}  // namespace v4rl
