// Sampler semantics: greedy ties, top-k/top-p kept sets, logprobs, frequencies against the
// renormalised distribution (chi-square), and independence from batch order and threads.
#include "kernels/cpu/sampling.h"

#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"

namespace v4rl::kernels::cpu {
namespace {

SampledToken SampleOne(const std::vector<float>& logits, SamplingParams params) {
  SampledToken out;
  SampleTokensRef(logits.data(), static_cast<int64_t>(logits.size()), 1,
                  static_cast<int64_t>(logits.size()), &params, &out, nullptr);
  return out;
}

TEST(Sampling, GreedyTakesLowestIdOnTies) {
  const SampledToken t = SampleOne({0.5f, 2.0f, 2.0f, -1.0f}, {.greedy = true});
  EXPECT_EQ(t.token, 1);
  EXPECT_EQ(t.kept_count, 1);
  EXPECT_EQ(t.sampling_logprob, 0.0f);
  const double log_z = std::log(std::exp(0.5) + 2 * std::exp(2.0) + std::exp(-1.0));
  EXPECT_NEAR(t.model_logprob, 2.0 - log_z, 1e-6);
}

TEST(Sampling, TopKAndTopPKeptSets) {
  // probs at temperature 1: 0.5, 0.25, 0.125, 0.125 (logits = log probs)
  const std::vector<float> logits = {std::log(0.5f), std::log(0.25f), std::log(0.125f),
                                     std::log(0.125f)};
  EXPECT_EQ(SampleOne(logits, {.top_k = 2}).kept_count, 2);
  EXPECT_EQ(SampleOne(logits, {.top_p = 0.5f}).kept_count, 1);
  EXPECT_EQ(SampleOne(logits, {.top_p = 0.6f}).kept_count, 2);
  EXPECT_EQ(SampleOne(logits, {.top_p = 0.75f}).kept_count, 2);
  EXPECT_EQ(SampleOne(logits, {.top_p = 0.8f}).kept_count, 3);
  // top-p acts on the top-k renormalised distribution: top-3 gives 4/7, 2/7, 1/7.
  EXPECT_EQ(SampleOne(logits, {.top_p = 0.8f, .top_k = 3}).kept_count, 2);
  const SampledToken t = SampleOne(logits, {.top_p = 0.6f, .seed = 3});
  EXPECT_LT(t.token, 2);
  EXPECT_NEAR(t.sampling_logprob, std::log(t.token == 0 ? 2.0 / 3 : 1.0 / 3), 1e-6);
  EXPECT_NEAR(t.model_logprob, logits[t.token], 1e-6);
}

TEST(Sampling, FrequenciesMatchTemperatureScaledDistribution) {
  const std::vector<float> logits = {1.0f, 0.0f, -0.5f, 2.0f, 0.3f};
  const float temperature = 0.7f;
  std::vector<double> expected(logits.size());
  double z = 0;
  for (size_t j = 0; j < logits.size(); ++j) z += expected[j] = std::exp(logits[j] / temperature);
  const int draws = 20000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    ++counts[SampleOne(logits, {.temperature = temperature, .seed = 11, .counter = uint64_t(i)}).token];
  }
  double chi_square = 0;
  for (size_t j = 0; j < logits.size(); ++j) {
    const double e = draws * expected[j] / z;
    chi_square += (counts[j] - e) * (counts[j] - e) / e;
  }
  EXPECT_LT(chi_square, 18.47) << "chi-square with 4 degrees of freedom, p = 0.001";
}

TEST(Sampling, RowsIndependentOfBatchOrderAndThreads) {
  const int64_t rows = 6, vocab = 50;
  std::vector<float> logits(rows * vocab);
  for (int64_t i = 0; i < rows * vocab; ++i) logits[i] = std::sin(0.37f * i) * 3;
  std::vector<SamplingParams> params(rows);
  for (int64_t r = 0; r < rows; ++r) params[r] = {.temperature = 1.0f, .top_p = 0.9f, .top_k = 20, .seed = 100 + uint64_t(r), .counter = 5};
  std::vector<SampledToken> forward(rows), reversed(rows);
  core::ThreadPool pool(3);
  SampleTokensRef(logits.data(), vocab, rows, vocab, params.data(), forward.data(), &pool);
  std::vector<float> logits_rev(rows * vocab);
  std::vector<SamplingParams> params_rev(rows);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(&logits[r * vocab], vocab, &logits_rev[(rows - 1 - r) * vocab]);
    params_rev[rows - 1 - r] = params[r];
  }
  SampleTokensRef(logits_rev.data(), vocab, rows, vocab, params_rev.data(), reversed.data(), nullptr);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(forward[r].token, reversed[rows - 1 - r].token);
    EXPECT_EQ(forward[r].sampling_logprob, reversed[rows - 1 - r].sampling_logprob);
  }
}

}  // namespace
}  // namespace v4rl::kernels::cpu
