// Compressor pooling backward against finite differences of CompressPoolRef in float64: CSA's
// overlapping two-series windows and HCA's plain windows, from entry 0 and from a later entry.
#include "kernels/cpu/compressor_backward.h"

#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/compressor.h"
#include "tests/testing/finite_difference.h"

namespace v4rl::kernels::cpu {
namespace {

using testing::Dot;
using testing::GradientMatches;
using testing::NumericalGradient;
using testing::RandomDoubles;

class CompressPoolBackwardTest : public ::testing::TestWithParam<std::tuple<bool, int64_t>> {};

TEST_P(CompressPoolBackwardTest, MatchesFiniteDifferences) {
  const bool overlap = std::get<0>(GetParam());
  const int64_t first_entry = std::get<1>(GetParam());
  constexpr int64_t num_windows = 3, ratio = 4, head_dim = 3;
  const int64_t width = (overlap ? 2 : 1) * head_dim;
  const int64_t rows = num_windows * ratio;
  const std::vector<double> kv = RandomDoubles(rows * width, 201);
  const std::vector<double> score = RandomDoubles(rows * width, 202, 2.0);
  const std::vector<double> g = RandomDoubles((num_windows - first_entry) * head_dim, 203);
  auto loss = [&](const std::vector<double>& k, const std::vector<double>& s) {
    std::vector<double> out((num_windows - first_entry) * head_dim);
    CompressPoolRef<double>(k.data(), s.data(), num_windows, ratio, head_dim, overlap, first_entry,
                            out.data(), nullptr);
    return Dot(g, out);
  };
  std::vector<double> dkv(rows * width, 0.0), dscore(rows * width, 0.0);
  core::ThreadPool pool(2);
  CompressPoolBackwardRef<double>(kv.data(), score.data(), num_windows, ratio, head_dim, overlap,
                                  first_entry, g.data(), dkv.data(), dscore.data(), &pool);
  EXPECT_TRUE(GradientMatches(
      "dkv", dkv, NumericalGradient([&](const auto& z) { return loss(z, score); }, kv)));
  EXPECT_TRUE(GradientMatches(
      "dscore", dscore, NumericalGradient([&](const auto& z) { return loss(kv, z); }, score)));
  if (overlap) {
    // Series A of the last window feeds an entry that does not exist yet: no gradient.
    for (int64_t j = 0; j < ratio; ++j) {
      for (int64_t d = 0; d < head_dim; ++d) {
        EXPECT_EQ(dkv[((num_windows - 1) * ratio + j) * width + d], 0.0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(OverlapAndFirstEntry, CompressPoolBackwardTest,
                         ::testing::Combine(::testing::Bool(),
                                            ::testing::Values(int64_t{0}, int64_t{1})));

}  // namespace
}  // namespace v4rl::kernels::cpu
