// CUDA sampling against kernels/cpu/sampling on the same f32 logits and seeds: tokens and kept
// sets equal, logprobs within 1e-5 (gpu label; skips without a device).
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/sampling.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;

// Runs both samplers on `logits` [rows, vocab] and compares every row.
void CheckRows(const Tensor& logits, const std::vector<cpu::SamplingParams>& params,
               const std::string& tag) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  std::vector<cpu::SampledToken> want(rows), got(rows);
  cpu::SampleTokensRef(logits.data<float>(), vocab, rows, vocab, params.data(), want.data(),
                       nullptr);
  const Tensor d_logits = testing::ToDevice(logits, DType::kF32);
  const Tensor workspace =
      Tensor::Empty(DType::kU8, {SampleTokensWorkspaceBytes(rows, vocab)}, DeviceAllocator());
  const absl::Status status = SampleTokens(d_logits.view(), params, workspace.view(), absl::MakeSpan(got));
  ASSERT_TRUE(status.ok()) << status.ToString();
  double max_logprob_error = 0;
  int64_t max_kept = 0;
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(got[r].token, want[r].token) << tag << " row " << r;
    EXPECT_EQ(got[r].kept_count, want[r].kept_count) << tag << " row " << r;
    EXPECT_NEAR(got[r].sampling_logprob, want[r].sampling_logprob, 1e-5) << tag << " row " << r;
    EXPECT_NEAR(got[r].model_logprob, want[r].model_logprob, 1e-5) << tag << " row " << r;
    max_logprob_error = std::max({max_logprob_error,
                                  double(std::abs(got[r].sampling_logprob - want[r].sampling_logprob)),
                                  double(std::abs(got[r].model_logprob - want[r].model_logprob))});
    max_kept = std::max<int64_t>(max_kept, want[r].kept_count);
  }
  std::printf("[measured] sampling %s: %lld rows x %lld vocab, max logprob error %.3g (tolerance "
              "1e-5), largest kept set %lld\n",
              tag.c_str(), static_cast<long long>(rows), static_cast<long long>(vocab),
              max_logprob_error, static_cast<long long>(max_kept));
}

TEST(CudaSampling, KeptSetBoundariesAsCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::vector<float> row = {std::log(0.5f), std::log(0.25f), std::log(0.125f),
                                  std::log(0.125f)};
  const std::vector<cpu::SamplingParams> params = {
      {.greedy = true}, {.top_k = 2}, {.top_p = 0.5f}, {.top_p = 0.6f},
      {.top_p = 0.75f}, {.top_p = 0.8f}, {.top_p = 0.8f, .top_k = 3}, {.top_p = 0.6f, .seed = 3}};
  std::vector<float> values;
  for (size_t r = 0; r < params.size(); ++r) values.insert(values.end(), row.begin(), row.end());
  CheckRows(Tensor::FromFloats({int64_t(params.size()), 4}, values), params, "boundaries");
}

TEST(CudaSampling, RandomRowsWithTiesMatchCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 64, vocab = 1031;
  Tensor logits = testing::RandomNormal({rows, vocab}, 5, 2.0f);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits.data<float>() + r * vocab;
    // Exact ties, including with the row maximum, and a -0 next to +0.
    float mx = row[0];
    for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, row[j]);
    row[(r * 37) % vocab] = mx;
    row[(r * 53 + 11) % vocab] = mx;
    for (int64_t j = 100; j < 140; j += 4) row[j] = row[j - 1];
    row[7] = 0.0f;
    row[8] = -0.0f;
  }
  const std::vector<cpu::SamplingParams> kinds = {
      {.greedy = true},
      {.temperature = 0.7f, .top_p = 0.9f, .top_k = 50},
      {.temperature = 1.3f, .top_p = 0.95f},
      {.temperature = 1.0f},
      {.temperature = 2.0f, .top_k = 1},
      {.temperature = 0.5f, .top_p = 0.8f, .top_k = 2000},
      {.temperature = 4.0f, .top_p = 0.99f, .top_k = 700},
      {.temperature = 1.0f, .top_p = 0.3f}};
  std::vector<cpu::SamplingParams> params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    params[r] = kinds[r % kinds.size()];
    params[r].seed = 1000 + 7 * r;
    params[r].counter = 13 * r;
  }
  CheckRows(logits, params, "random rows");
}

TEST(CudaSampling, V4VocabularyFlatRows) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 3, vocab = 129280;
  const Tensor logits = testing::RandomNormal({rows, vocab}, 9, 0.5f);
  std::vector<cpu::SamplingParams> params = {
      {.temperature = 1.0f, .top_p = 0.99f, .seed = 1, .counter = 5},
      {.temperature = 1.0f, .seed = 2, .counter = 6},
      {.temperature = 0.8f, .top_p = 0.9f, .top_k = 4096, .seed = 3, .counter = 7}};
  CheckRows(logits, params, "V4 vocabulary");
}

TEST(CudaSampling, RejectsBadTemperature) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor logits = Tensor::Empty(DType::kF32, {1, 8}, DeviceAllocator());
  const Tensor workspace =
      Tensor::Empty(DType::kU8, {SampleTokensWorkspaceBytes(1, 8)}, DeviceAllocator());
  std::vector<cpu::SamplingParams> params = {{.temperature = 0.0f}};
  std::vector<cpu::SampledToken> out(1);
  EXPECT_FALSE(SampleTokens(logits.view(), params, workspace.view(), absl::MakeSpan(out)).ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
