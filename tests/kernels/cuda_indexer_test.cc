// CUDA lightning-indexer selection (exact radix select, ties to the lower id) and the full
// scoring + top-k against kernels/cpu/indexer on the same bf16-rounded inputs (gpu label; skips
// without a device).
#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/indexer.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/indexer.h"
#include "kernels/plan/compressed_attention.h"
#include "kernels/plan/topk.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;

// The CPU rule of kernels/cpu/indexer.cc on given scores.
std::vector<int32_t> CpuSelect(const float* row, int64_t visible, int64_t k) {
  std::vector<int32_t> out(k, -1);
  const int64_t count = std::min(visible, k);
  if (visible <= k) {
    for (int64_t s = 0; s < count; ++s) out[s] = static_cast<int32_t>(s);
    return out;
  }
  std::vector<float> picked(k);
  plan::TopK(row, static_cast<int32_t>(visible), static_cast<int32_t>(k), out.data(),
             picked.data());
  std::sort(out.begin(), out.begin() + count);
  return out;
}

// IndexerSelect on the host's scores [num_q, num_keys] (copied as they are: NaN, ±inf, -0)
// against the CPU rule, pick by pick.
void CheckSelectScores(const Tensor& scores, int64_t k, int64_t q_pos0, int64_t ratio) {
  const int64_t num_q = scores.size(0), num_keys = scores.size(1);
  const Tensor d_scores = testing::ToDevice(scores, DType::kF32);
  const Tensor d_idx = Tensor::Empty(DType::kI32, {num_q, k}, DeviceAllocator());
  ASSERT_TRUE(IndexerSelect(d_scores.view(), q_pos0, ratio, d_idx.view()).ok());
  const Tensor got = testing::ToHost(d_idx.view());
  for (int64_t i = 0; i < num_q; ++i) {
    const int64_t visible = std::min(plan::NumVisibleCompressed(q_pos0 + i, ratio), num_keys);
    const std::vector<int32_t> want = CpuSelect(scores.data<float>() + i * num_keys, visible, k);
    for (int64_t j = 0; j < k; ++j) {
      ASSERT_EQ(got.data<int32_t>()[i * k + j], want[j])
          << "row " << i << " pick " << j << " (visible " << visible << ", k " << k << ")";
    }
  }
}

void CheckSelect(int64_t num_q, int64_t num_keys, int64_t k, int64_t q_pos0, int64_t ratio,
                 int levels, uint64_t seed) {
  // Scores from a few levels: many exact ties, -0 next to +0, negatives.
  Tensor scores = testing::RandomUniform({num_q, num_keys}, seed, 0.0f, float(levels));
  for (int64_t e = 0; e < scores.numel(); ++e) {
    float v = std::floor(scores.data<float>()[e]) - 1.0f;
    if (v == 0.0f && e % 2 == 1) v = -0.0f;
    scores.data<float>()[e] = v;
  }
  CheckSelectScores(scores, k, q_pos0, ratio);
}

TEST(CudaIndexer, SelectMatchesCpuTopKWithTies) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckSelect(17, 203, 37, 400, 4, 4, 1);     // every row selects among ~100 with 4 levels
  CheckSelect(17, 203, 37, 120, 4, 3, 2);     // early rows keep all visible ids, -1 padding
  CheckSelect(5, 5003, 512, 20000, 4, 50, 3);  // V4's k over > 1 chunk of 512 threads
  CheckSelect(3, 700, 64, 4000, 4, 1 << 20, 4);  // nearly distinct scores
  // Long rows (decode at long contexts): several 4096-score tiles, the k-th score's ties spread
  // over all of them; up to 16 rows this long take the wide path (SelectFewLongRows below).
  CheckSelect(3, 20011, 512, 90000, 4, 7, 5);
  CheckSelect(4, 40000, 512, 100000, 4, 3, 6);    // visible 25000-25001: partial and empty segments
  CheckSelect(1, 250007, 512, 1000100, 4, 7, 7);  // 1M tokens: 250K keys, heavy ties
  CheckSelect(1, 250007, 512, 1000100, 4, 1 << 20, 8);  // and nearly distinct scores
}

// The wide path (at most 16 rows of more than 16,384 keys: single-stream decode at long
// context) on the rows that stress it: the k-th score tied across many blocks, all-equal rows, a
// k-th key found only by the last radix level, NaN, -inf padding, visible counts around k.
TEST(CudaIndexer, SelectFewLongRowsMatchesCpuTopK) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kLd = 250000, kK = 512;
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Decode's call: q_pos0 = ld · ratio, so every row sees all ld entries.
  auto decode = [&](const Tensor& scores) { CheckSelectScores(scores, kK, kLd * 4, 4); };
  auto normal = [&](int64_t rows, uint64_t seed) {
    return testing::RandomNormal({rows, kLd}, seed);
  };
  {
    SCOPED_TRACE("1M tokens, 1 and 3 rows, levels and nearly distinct scores");
    CheckSelect(3, kLd, kK, kLd * 4, 4, 7, 9);
    CheckSelect(3, kLd, kK, kLd * 4, 4, 1 << 20, 10);
    decode(normal(1, 11));
    decode(normal(3, 12));
  }
  {
    SCOPED_TRACE("k-th score tied across many blocks");
    Tensor s = normal(2, 13);
    for (int64_t e = 0; e < s.numel(); ++e) {
      float& v = s.data<float>()[e];
      v = std::min(v, 4.0f);
      if (e % 833 == 0) v = 10.0f;  // about 300 a row above the tie
      if (e % 500 == 7) v = 5.0f;   // 500 a row tied at the k-th: ~210 taken over ~50 blocks
    }
    decode(s);
  }
  {
    SCOPED_TRACE("all-equal rows: one bin at every level");
    Tensor s = Tensor::Empty(DType::kF32, {3, kLd});
    for (int64_t e = 0; e < s.numel(); ++e) {
      const int64_t row = e / kLd;
      s.data<float>()[e] = row == 0 ? 1.0f : row == 1 ? (e % 2 ? -0.0f : 0.0f) : -inf;
    }
    decode(s);
  }
  {
    SCOPED_TRACE("keys equal in their top 22 bits: the k-th found at the last level");
    Tensor s = Tensor::Empty(DType::kF32, {2, kLd});
    for (int64_t e = 0; e < s.numel(); ++e) {
      // 1 + m · 2^-23 for m < 1024: one level-0 and level-1 bin, distinct low bits.
      s.data<float>()[e] = 1.0f + static_cast<float>((e * 7919) % 1024) * 0x1p-23f;
    }
    decode(s);
  }
  {
    SCOPED_TRACE("NaN ranks last, ties among NaNs to the lower id");
    Tensor s = normal(3, 14);
    for (int64_t e = 0; e < s.numel(); ++e) {
      const int64_t row = e / kLd, col = e % kLd;
      float& v = s.data<float>()[e];
      if (row == 0 && col % 10 != 3) v = nan;    // 25,000 real scores among NaNs
      if (row == 1 && col % 1000 != 0) v = nan;  // 250 real: NaNs fill the picks
      if (row == 2 && col % 3 == 0) v = col % 2 ? -inf : nan;
    }
    decode(s);
  }
  {
    SCOPED_TRACE("-inf padding past each row's keys (DecodeIndexerScores), batch of 16");
    Tensor s = normal(16, 15);
    const int64_t keys[16] = {1,    300,  511,   512,   513,   1000,   2047,   2048,
                              2049, 4097, 16385, 50000, 99999, 200001, 249999, kLd};
    for (int64_t row = 0; row < 16; ++row) {
      for (int64_t col = keys[row]; col < kLd; ++col) s.data<float>()[row * kLd + col] = -inf;
    }
    decode(s);
  }
  {
    SCOPED_TRACE("visible counts around k and a tile boundary (ratio 1: one more a row)");
    CheckSelect(8, 20000, kK, /*q_pos0=*/kK - 4, 1, 5, 16);      // visible 509 .. 516
    CheckSelect(6, 20000, kK, /*q_pos0=*/2044, 1, 1 << 20, 17);  // visible 2045 .. 2050
    CheckSelect(16, 20000, kK, 70000, 4, 5, 18);                 // 16 rows: the wide path's most
    CheckSelect(17, 20000, kK, 70000, 4, 5, 19);                 // 17: one block a row
    CheckSelect(2, 16385, kK, 70000, 4, 3, 20);                  // just over the wide path's bound
    CheckSelect(2, 30000, 1, 200000, 4, 3, 21);                  // k = 1
    CheckSelect(2, 30000, 3000, 200000, 4, 9, 22);               // k larger than a block's tile
  }
}

TEST(CudaIndexer, TopKMatchesCpuUpToNearTies) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t num_q = 17, heads = 5, head_dim = 64, num_keys = 61, k = 9, ratio = 4;
  const int64_t q_pos0 = 200;
  const float score_scale = 0.125f;
  const Tensor q = testing::RoundToBf16(testing::RandomNormal({num_q, heads, head_dim}, 5));
  const Tensor keys = testing::RoundToBf16(testing::RandomNormal({num_keys, head_dim}, 6));
  const Tensor weights = testing::RandomNormal({num_q, heads}, 7);
  Tensor want = Tensor::Empty(DType::kI32, {num_q, k});
  cpu::IndexerTopKParams p;
  p.q = q.data<float>();
  p.weights = weights.data<float>();
  p.keys = keys.data<float>();
  p.topk_idx = want.data<int32_t>();
  p.num_q = num_q;
  p.num_heads = heads;
  p.head_dim = head_dim;
  p.num_keys = num_keys;
  p.topk = k;
  p.q_pos0 = q_pos0;
  p.ratio = ratio;
  p.score_scale = score_scale;
  cpu::IndexerTopKRef(p, nullptr);

  const Tensor dq = testing::ToDevice(q, DType::kBF16);
  const Tensor dkeys = testing::ToDevice(keys, DType::kBF16);
  const Tensor dweights = testing::ToDevice(weights, DType::kF32);
  const Tensor didx = Tensor::Empty(DType::kI32, {num_q, k}, DeviceAllocator());
  const int64_t chunk = 4;  // several chunks, the last one partial
  const Tensor workspace = Tensor::Empty(
      DType::kF32, {IndexerTopKWorkspaceFloats(chunk, heads, num_keys)}, DeviceAllocator());
  auto handle = GemmHandle::Create();
  ASSERT_TRUE(handle.ok());
  IndexerTopKArgs a;
  a.q = dq.view();
  a.weights = dweights.view();
  a.keys = dkeys.view();
  a.topk_idx = didx.view();
  a.workspace = workspace.view();
  a.q_pos0 = q_pos0;
  a.ratio = ratio;
  a.score_scale = score_scale;
  a.q_chunk = chunk;
  ASSERT_TRUE(IndexerTopK(**handle, a).ok());
  const Tensor got = testing::ToHost(didx.view());

  // Exact scores in double on the host: picks may differ from the CPU's only where two scores
  // are within fp32 rounding (1e-4 relative here) of the k-th.
  int64_t differing_rows = 0;
  for (int64_t i = 0; i < num_q; ++i) {
    const int64_t visible = std::min(plan::NumVisibleCompressed(q_pos0 + i, ratio), num_keys);
    std::vector<double> score(visible);
    for (int64_t s = 0; s < visible; ++s) {
      for (int64_t h = 0; h < heads; ++h) {
        double dot = 0;
        for (int64_t d = 0; d < head_dim; ++d) {
          dot += double(q.data<float>()[(i * heads + h) * head_dim + d]) *
                 keys.data<float>()[s * head_dim + d];
        }
        score[s] += std::max(dot, 0.0) * score_scale * weights.data<float>()[i * heads + h];
      }
    }
    std::vector<double> sorted = score;
    std::sort(sorted.rbegin(), sorted.rend());
    const double kth = visible > k ? sorted[k - 1] : -INFINITY;
    std::set<int32_t> want_set(want.data<int32_t>() + i * k, want.data<int32_t>() + (i + 1) * k);
    std::set<int32_t> got_set(got.data<int32_t>() + i * k, got.data<int32_t>() + (i + 1) * k);
    if (want_set != got_set) ++differing_rows;
    for (int32_t id : got_set) {
      if (want_set.count(id) || id < 0) continue;
      EXPECT_NEAR(score[id], kth, 1e-4 * std::abs(kth) + 1e-5) << "row " << i << " id " << id;
    }
    // Ascending ids, -1 padding at the end.
    for (int64_t j = 1; j < k; ++j) {
      const int32_t a_id = got.data<int32_t>()[i * k + j - 1], b_id = got.data<int32_t>()[i * k + j];
      EXPECT_TRUE(b_id == -1 || a_id < b_id) << "row " << i;
    }
  }
  std::printf("[measured] indexer top-k: %lld of %lld rows pick a different set than the CPU\n",
              static_cast<long long>(differing_rows), static_cast<long long>(num_q));
}

}  // namespace
}  // namespace v4rl::kernels::cuda
