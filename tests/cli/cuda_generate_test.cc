// `v4rl generate --device cuda` (GPU decode + GPU sampling) on the committed mixed_small model
// (gpu label; skips without a device): the fixture's two prompts plus a short third one (ragged
// prefill), greedy and sampled. Checked: the outputs' shapes and lengths; the GPU's tokens do not
// depend on --prefill-chunk; they equal transformers' greedy decode_tokens and the CPU's sampled
// tokens up to the first near-tie (printed: how many tokens agree before the first difference);
// at least the first token of every row agrees; greedy with --no-cuda-graphs agrees with the
// graphs' tokens and log-probabilities up to a near-tie. Uses $V4RL_BINARY, else the `v4rl` next to
// this test (the device bundle's layout).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "tests/testing/run_command.h"

namespace v4rl {
namespace {

using core::DType;
using core::Tensor;

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

class CudaGenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    const Tensor ids = ReadTensor(Fixture("reference.safetensors"), "input_ids");  // [2, 40] i64
    Tensor prompts = Tensor::Empty(DType::kI64, {3, 37});
    for (int64_t b = 0; b < 3; ++b) {
      for (int64_t t = 0; t < 37; ++t) {
        prompts.data<int64_t>()[b * 37 + t] = ids.data<int64_t>()[(b % 2) * 40 + t];
      }
    }
    Tensor lengths = Tensor::Empty(DType::kI32, {3});
    lengths.data<int32_t>()[0] = lengths.data<int32_t>()[1] = 37;
    lengths.data<int32_t>()[2] = 12;
    input_ = ::testing::TempDir() + "/cuda_generate_in.safetensors";
    ASSERT_TRUE(core::WriteSafetensors(input_, {{"input_ids", prompts.view()},
                                                {"lengths", lengths.view()}}).ok());
  }

  // Runs generate with `rest`, writing `tag`'s output file; returns its tokens [3, N].
  Tensor Run(const std::string& tag, const std::string& rest) {
    const std::string out = ::testing::TempDir() + "/cuda_generate_" + tag + ".safetensors";
    const testing::CommandResult run = testing::RunV4rl(
        "generate --model " + Fixture("model") + " --input " + input_ + " --output " + out + " " +
        rest);
    EXPECT_EQ(run.exit_code, 0) << run.output;
    last_output_ = out;
    return ReadTensor(out, "tokens");
  }

  // Tokens of row b equal before the first difference.
  static int64_t AgreeingPrefix(const Tensor& a, const Tensor& b, int64_t row,
                                const int64_t* expected_i64 = nullptr) {
    const int64_t n = a.size(1);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t want = expected_i64 ? expected_i64[row * n + t] : b.data<int32_t>()[row * n + t];
      if (a.data<int32_t>()[row * n + t] != want) return t;
    }
    return n;
  }

  std::string input_, last_output_;
};

TEST_F(CudaGenerateTest, GreedyAgreesWithTransformersUntilNearTies) {
  const Tensor gpu = Run("greedy", "--device cuda --max-new-tokens 12 --greedy");
  ASSERT_TRUE(gpu.view().SameShape({3, 12})) << gpu.view().DebugString();
  const Tensor lengths = ReadTensor(last_output_, "lengths");
  for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(lengths.data<int32_t>()[b], 12);
  EXPECT_TRUE(ReadTensor(last_output_, "routed_experts").view().SameShape({3, 37 + 11, 3, 2}));
  const Tensor graph_logprobs = ReadTensor(last_output_, "logprobs");
  const Tensor chunked = Run("greedy_chunked", "--device cuda --max-new-tokens 12 --greedy "
                                               "--prefill-chunk 5");
  for (int64_t i = 0; i < gpu.numel(); ++i) {
    EXPECT_EQ(gpu.data<int32_t>()[i], chunked.data<int32_t>()[i]) << i;
  }
  // Launch by launch instead of CUDA graphs: the same kernels, but a graph sizes the attention's
  // key splits from its position bound, so at this batch of 3 one layer may combine split
  // partials where launch by launch does not (rounding only). Rows must agree token for token,
  // their log-probabilities within 1e-2, until a first difference that is a near-tie (both runs'
  // picks about equally likely there).
  const Tensor launched =
      Run("greedy_no_graphs", "--device cuda --max-new-tokens 12 --greedy --no-cuda-graphs");
  const Tensor launched_logprobs = ReadTensor(last_output_, "logprobs");
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t agree = AgreeingPrefix(gpu, launched, b);
    std::printf("[measured] greedy row %ld: %ld of 12 tokens equal with and without CUDA graphs\n",
                long(b), long(agree));
    for (int64_t t = 0; t < std::min<int64_t>(agree + 1, 12); ++t) {
      EXPECT_NEAR(graph_logprobs.data<float>()[b * 12 + t],
                  launched_logprobs.data<float>()[b * 12 + t], 1e-2)
          << "row " << b << " token " << t;
    }
  }
  const Tensor expected = ReadTensor(Fixture("reference.safetensors"), "decode_tokens");  // [2, 12]
  for (int64_t b = 0; b < 2; ++b) {
    const int64_t agree = AgreeingPrefix(gpu, gpu, b, expected.data<int64_t>());
    std::printf("[measured] greedy row %ld: %ld of 12 tokens equal to transformers' before the "
                "first difference\n", long(b), long(agree));
    EXPECT_GE(agree, 1);
  }
}

TEST_F(CudaGenerateTest, SampledAgreesWithCpuUntilNearTies) {
  const std::string flags = "--max-new-tokens 10 --temperature 0.8 --top-p 0.9 --top-k 20 --seed 5";
  const Tensor cpu = Run("sampled_cpu", flags);
  const Tensor gpu = Run("sampled_gpu", flags + " --device cuda");
  const Tensor again = Run("sampled_gpu_chunked", flags + " --device cuda --prefill-chunk 7");
  ASSERT_TRUE(gpu.view().SameShape(cpu.view().shape_vector()));
  for (int64_t i = 0; i < gpu.numel(); ++i) {
    EXPECT_EQ(gpu.data<int32_t>()[i], again.data<int32_t>()[i]) << i;
  }
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t agree = AgreeingPrefix(gpu, cpu, b);
    std::printf("[measured] sampled row %ld: %ld of 10 tokens equal to the CPU's before the first "
                "difference\n", long(b), long(agree));
    EXPECT_GE(agree, 1);
  }
  const testing::CommandResult bad = testing::RunV4rl(
      "generate --model " + Fixture("model") + " --input " + input_ +
      " --output /dev/null --max-new-tokens 2 --greedy --device tpu");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
}

}  // namespace
}  // namespace v4rl
