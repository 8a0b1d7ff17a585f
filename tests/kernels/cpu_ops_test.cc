// CPU reference ops on hand-derived cases: linear vs a double-precision loop (odd sizes, strided
// rows, thread-count and batch independence), deterministic top-k ties, the MoE dispatch plan,
// Sinkhorn's doubly stochastic output, attention sinks and compressed-entry visibility, the
// compressor's window / overlap boundaries, the SwiGLU clamp and RoPE's inverse.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/mhc.h"
#include "kernels/ops.h"
#include "kernels/plan/compressed_attention.h"
#include "kernels/plan/moe_dispatch.h"
#include "kernels/plan/topk.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::kernels {
namespace {

using core::DType;
using core::Tensor;
using v4rl::testing::RandomNormal;

TEST(LinearTest, MatchesDoubleLoopOnOddStridedShapes) {
  // x rows strided inside a wider buffer; sizes off every tile multiple.
  const int64_t m = 17, n = 13, k = 37;
  const Tensor x_buffer = RandomNormal({m, k + 5}, 1);
  const Tensor w = RandomNormal({n, k}, 2);
  const core::TensorView x = x_buffer.view().Slice(1, 2, 2 + k);
  Tensor out = Tensor::Empty(DType::kF32, {m, n});
  Linear(x, w.view(), out.view());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0;
      for (int64_t c = 0; c < k; ++c) {
        ref += static_cast<double>(x_buffer.data<float>()[i * (k + 5) + 2 + c]) *
               w.data<float>()[j * k + c];
      }
      EXPECT_NEAR(out.data<float>()[i * n + j], ref, 1e-5) << i << "," << j;
    }
  }
}

TEST(LinearTest, BitIdenticalAcrossThreadsAndRowCounts) {
  const int64_t m = 70, n = 131, k = 100;
  const Tensor x = RandomNormal({m, k}, 3);
  const Tensor w = RandomNormal({n, k}, 4);
  std::vector<float> serial(m * n), parallel(m * n), one_row(n);
  cpu::LinearRef(x.data<float>(), k, w.data<float>(), k, serial.data(), n, m, n, k, nullptr);
  core::ThreadPool pool(3);
  cpu::LinearRef(x.data<float>(), k, w.data<float>(), k, parallel.data(), n, m, n, k, &pool);
  EXPECT_EQ(serial, parallel);
  // A single row (decode) gives the same bits as that row inside a batch (prefill).
  cpu::LinearRef(x.data<float>() + 33 * k, k, w.data<float>(), k, one_row.data(), n, 1, n, k,
                 &pool);
  EXPECT_TRUE(std::equal(one_row.begin(), one_row.end(), serial.begin() + 33 * n));
}

TEST(TopKTest, TiesPreferTheLowerIndex) {
  const float scores[] = {1, 3, 3, 2, 3, std::numeric_limits<float>::quiet_NaN()};
  int32_t idx[3];
  float picked[3];
  plan::TopK(scores, 6, 3, idx, picked);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 2);
  EXPECT_EQ(idx[2], 4);
  int32_t idx5[5];
  float picked5[5];
  plan::TopK(scores, 6, 5, idx5, picked5);  // NaN ranks after every real score
  EXPECT_EQ(idx5[3], 3);
  EXPECT_EQ(idx5[4], 0);
}

TEST(TopKTest, SelectsTheLargest) {
  const float scores[] = {0.5f, -1.0f, 7.0f, 0.25f, 6.5f, 7.5f};
  int32_t idx[2];
  float picked[2];
  plan::TopK(scores, 6, 2, idx, picked);
  EXPECT_EQ(idx[0], 5);
  EXPECT_EQ(idx[1], 2);
  EXPECT_EQ(picked[0], 7.5f);
}

TEST(MoeDispatchPlanTest, GroupsByExpertKeepingTokenOrder) {
  // 3 tokens x 2 picks; token 1's second pick dropped (-1).
  const int32_t topk[] = {2, 0, 0, -1, 2, 1};
  const plan::MoeDispatchPlan p = plan::BuildMoeDispatchPlan(topk, 3, 2, 3);
  EXPECT_EQ(p.expert_offsets, (std::vector<int64_t>{0, 2, 3, 5}));
  EXPECT_EQ(p.slots, (std::vector<int64_t>{1, 2, 5, 0, 4}));
  EXPECT_EQ(p.num_tokens_for_expert(2), 2);
}

TEST(SinkhornTest, OutputIsDoublyStochastic) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    // Logits of the scale the mixes have in practice (normalised streams, unit gates).
    const Tensor logits = RandomNormal({4, 4}, 100 + seed, 1.0f);
    std::vector<float> m(logits.data<float>(), logits.data<float>() + 16);
    cpu::SinkhornRef(m.data(), 4, 20, 1e-6f);
    for (int i = 0; i < 4; ++i) {
      float row = 0, col = 0;
      for (int j = 0; j < 4; ++j) {
        row += m[i * 4 + j];
        col += m[j * 4 + i];
        EXPECT_GT(m[i * 4 + j], 0.0f);
      }
      EXPECT_NEAR(row, 1.0f, 1e-5) << "seed " << seed << " row " << i;
      EXPECT_NEAR(col, 1.0f, 1e-5) << "seed " << seed << " col " << i;
    }
  }
}

TEST(SinkhornTest, OneIterationIsRowSoftmaxPlusEpsThenColumns) {
  // L = [[0, ln 3], [0, 0]]: rows softmax to [.25, .75] and [.5, .5]; + eps; column sums .75+2e
  // and 1.25+2e.
  const float eps = 0.01f;
  float m[4] = {0.0f, std::log(3.0f), 0.0f, 0.0f};
  cpu::SinkhornRef(m, 2, 1, eps);
  const float c0 = 0.25f + eps + 0.5f + eps, c1 = 0.75f + eps + 0.5f + eps;
  EXPECT_NEAR(m[0], (0.25f + eps) / (c0 + eps), 1e-6);
  EXPECT_NEAR(m[1], (0.75f + eps) / (c1 + eps), 1e-6);
  EXPECT_NEAR(m[2], (0.5f + eps) / (c0 + eps), 1e-6);
  EXPECT_NEAR(m[3], (0.5f + eps) / (c1 + eps), 1e-6);
}

TEST(MhcTest, ExpandSumsOverTheRowIndex) {
  // comb[j][k]: stream j feeds output k; with comb = [[0, 1], [0, 0]] output 1 = stream 0.
  const float streams[] = {1, 2, 10, 20};  // [1 token, 2 streams, 2 hidden]
  const float y[] = {100, 200};
  const float post[] = {0, 0.5f};
  const float comb[] = {0, 1, 0, 0};
  float out[4];
  cpu::MhcExpandRef(streams, y, post, comb, 1, 2, 2, out, nullptr);
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(out[1], 0);
  EXPECT_EQ(out[2], 1 + 50);
  EXPECT_EQ(out[3], 2 + 100);
}

TEST(SparseAttentionTest, SinkOnlyEntersTheDenominator) {
  // One key: o = v · e^s / (e^s + e^sink), lse = log(e^s + e^sink).
  const int64_t dim = 4;
  Tensor q = Tensor::FromFloats({1, 1, dim}, {1, 0, 0, 0});
  Tensor kv = Tensor::FromFloats({1, dim}, {2, 3, -1, 5});
  for (float sink : {-1e30f, 0.0f, 1.5f}) {
    Tensor sinks = Tensor::FromFloats({1}, {sink});
    Tensor out = Tensor::Zeros(DType::kF32, {1, 1, dim});
    Tensor lse = Tensor::Zeros(DType::kF32, {1, 1});
    SparseAttentionArgs args;
    args.q = q.view();
    args.kv = kv.view();
    args.sink = sinks.view();
    args.out = out.view();
    args.lse = lse.view();
    args.window = 4;
    args.scale = 0.5f;
    SparseAttention(args);
    const double s = 0.5 * 2;
    const double p = std::exp(s) / (std::exp(s) + std::exp(static_cast<double>(sink)));
    for (int64_t d = 0; d < dim; ++d) {
      EXPECT_NEAR(out.data<float>()[d], p * kv.data<float>()[d], 1e-6) << "sink " << sink;
    }
    EXPECT_NEAR(lse.data<float>()[0], std::log(std::exp(s) + std::exp(double(sink))), 1e-6);
  }
}

// Attention over window + all visible compressed entries vs window only, per query.
std::vector<float> AttendPerQuery(int64_t seq_len, int64_t ratio, bool with_compressed) {
  const int64_t heads = 2, dim = 8, window = 3;
  const Tensor q = RandomNormal({seq_len, heads, dim}, 7);
  const Tensor kv = RandomNormal({seq_len, dim}, 8);
  const Tensor comp = RandomNormal({seq_len / ratio, dim}, 9, 4.0f);
  const Tensor sinks = RandomNormal({heads}, 10);
  Tensor out = Tensor::Zeros(DType::kF32, {seq_len, heads, dim});
  SparseAttentionArgs args;
  args.q = q.view();
  args.kv = kv.view();
  args.sink = sinks.view();
  args.out = out.view();
  args.window = window;
  args.scale = 0.3f;
  if (with_compressed) {
    args.comp_kv = comp.view();
    args.comp_ratio = ratio;
  }
  SparseAttention(args);
  return out.ToFloatVector();
}

TEST(SparseAttentionTest, QuerySeesOnlyCompleteCompressedWindows) {
  const int64_t ratio = 4, seq_len = 12, row = 2 * 8;
  const std::vector<float> with = AttendPerQuery(seq_len, ratio, true);
  const std::vector<float> without = AttendPerQuery(seq_len, ratio, false);
  for (int64_t t = 0; t < seq_len; ++t) {
    const bool same = std::equal(with.begin() + t * row, with.begin() + (t + 1) * row,
                                 without.begin() + t * row);
    // Entry 0 completes with token ratio - 1 (pitfall 6): queries 0..2 see none.
    EXPECT_EQ(same, plan::NumVisibleCompressed(t, ratio) == 0) << "query " << t;
  }
  EXPECT_EQ(plan::NumVisibleCompressed(3, 4), 1);
  EXPECT_EQ(plan::NumVisibleCompressed(6, 4), 1);
  EXPECT_EQ(plan::NumVisibleCompressed(7, 4), 2);
  EXPECT_EQ(plan::WindowBegin(10, 4), 7);
  EXPECT_EQ(plan::WindowBegin(2, 4), 0);
}

TEST(SparseAttentionTest, KeySlotsOfAQuery) {
  // Window clipped by the sequence's first raw row, then all visible entries (capped by those
  // that exist) or the query's top-k slots.
  plan::QueryKeySlots s = plan::KeySlots(/*position=*/10, /*window=*/4, /*kv_pos0=*/0,
                                         /*has_comp=*/true, /*has_picks=*/false, 0, 4, 100);
  EXPECT_EQ(s.first, 7);
  EXPECT_EQ(s.num_window, 4);
  EXPECT_EQ(s.comp_slots, 2);  // entries 0 and 1 (tokens 0-7) are complete at position 10
  EXPECT_EQ(s.total(), 6);
  s = plan::KeySlots(10, 128, /*kv_pos0=*/5, true, false, 0, 4, /*num_comp=*/1);
  EXPECT_EQ(s.first, 5);
  EXPECT_EQ(s.num_window, 6);
  EXPECT_EQ(s.comp_slots, 1);
  s = plan::KeySlots(10, 4, 0, true, /*has_picks=*/true, /*comp_topk=*/9, 4, 1);
  EXPECT_EQ(s.comp_slots, 9);
  s = plan::KeySlots(10, 4, 0, /*has_comp=*/false, true, 9, 4, 100);
  EXPECT_EQ(s.comp_slots, 0);
  EXPECT_EQ(s.total(), 4);
  // Where each slot lives: window rows relative to kv_pos0, then picks (out-of-range ones -1).
  s = plan::KeySlots(10, 4, /*kv_pos0=*/2, true, true, /*comp_topk=*/3, 4, /*num_comp=*/2);
  const int32_t picks[] = {1, -1, 2};
  const plan::KeySlotSource first = plan::KeySlotAt(s, 0, 2, picks, 2);
  EXPECT_EQ(first.index, 5);  // position 7 is row 5 of a sequence whose rows start at 2
  EXPECT_FALSE(first.compressed);
  EXPECT_EQ(plan::KeySlotAt(s, 3, 2, picks, 2).index, 8);
  const plan::KeySlotSource pick = plan::KeySlotAt(s, 4, 2, picks, 2);
  EXPECT_EQ(pick.index, 1);
  EXPECT_TRUE(pick.compressed);
  EXPECT_EQ(plan::KeySlotAt(s, 5, 2, picks, 2).index, -1);  // -1 pick
  EXPECT_EQ(plan::KeySlotAt(s, 6, 2, picks, 2).index, -1);  // 2 >= num_comp
  EXPECT_EQ(plan::KeySlotAt(s, 4, 2, nullptr, 2).index, 0);  // all visible: slot order
}

// The key list two consecutive queries share (the CUDA query-pair backward): weighted by
// SharedSlotWeight, each query takes exactly the keys of its own KeySlots, duplicates and skipped
// picks included, over clipped windows, early positions and both kinds of compressed slots.
TEST(SparseAttentionTest, SharedSlotsGiveEachQueryItsOwnKeys) {
  struct Key {
    int64_t index;
    bool compressed;
    bool operator<(const Key& o) const {
      return compressed != o.compressed ? compressed < o.compressed : index < o.index;
    }
    bool operator==(const Key& o) const { return index == o.index && compressed == o.compressed; }
  };
  const int64_t ratio = 4, num_comp = 9, topk = 5;
  for (const int64_t window : {1, 3, 8}) {
    for (const int64_t kv_pos0 : {0, 2}) {
      for (const bool with_picks : {false, true}) {
        for (int64_t first = kv_pos0; first < kv_pos0 + 30; ++first) {
          const int64_t positions[2] = {first, first + 1};
          // Picks: a query-dependent spread with a duplicate, a -1 and an id past num_comp.
          std::vector<int32_t> picks(2 * topk);
          for (int q = 0; q < 2; ++q) {
            for (int64_t j = 0; j < topk; ++j) {
              picks[q * topk + j] = static_cast<int32_t>((positions[q] * 3 + j * 2) % 11) - 1;
            }
            picks[q * topk + topk - 1] = picks[q * topk];
          }
          int32_t largest = -1;
          std::vector<int> counts(2 * num_comp, 0);
          for (int q = 0; q < 2; ++q) {
            for (int64_t j = 0; j < topk; ++j) {
              const int32_t e = picks[q * topk + j];
              if (e >= 0 && e < num_comp) ++counts[q * num_comp + e], largest = std::max(largest, e);
            }
          }
          const int64_t entries =
              with_picks ? largest + 1
                         : std::min(plan::NumVisibleCompressed(positions[1], ratio), num_comp);
          const plan::SharedKeySlots shared =
              plan::SharedSlots(positions[0], positions[1], window, kv_pos0, entries);
          for (int q = 0; q < 2; ++q) {
            const int32_t* own_picks = with_picks ? picks.data() + q * topk : nullptr;
            const plan::QueryKeySlots own = plan::KeySlots(
                positions[q], window, kv_pos0, true, with_picks, topk, ratio, num_comp);
            std::vector<Key> want, got;
            for (int64_t j = 0; j < own.total(); ++j) {
              const plan::KeySlotSource src = plan::KeySlotAt(own, j, kv_pos0, own_picks, num_comp);
              if (src.index >= 0) want.push_back({src.index, src.compressed});
            }
            for (int64_t j = 0; j < shared.total(); ++j) {
              const bool entry = j >= shared.num_window;
              const int entry_picks =
                  entry && with_picks ? counts[q * num_comp + (j - shared.num_window)] : -1;
              const int weight = plan::SharedSlotWeight(shared, j, positions[q], window, kv_pos0,
                                                        entry_picks, ratio, num_comp);
              const Key key = entry ? Key{j - shared.num_window, true}
                                    : Key{shared.first - kv_pos0 + j, false};
              for (int w = 0; w < weight; ++w) got.push_back(key);
            }
            std::sort(want.begin(), want.end());
            std::sort(got.begin(), got.end());
            EXPECT_TRUE(want == got) << "window " << window << " kv_pos0 " << kv_pos0
                                     << (with_picks ? " picks" : " visible") << " position "
                                     << positions[q];
          }
        }
      }
    }
  }
}

TEST(SparseAttentionTest, TopKListsSkipInvalidPicks) {
  const int64_t dim = 4;
  Tensor q = Tensor::FromFloats({1, 1, dim}, {1, 1, 0, 0});
  Tensor kv = Tensor::FromFloats({1, dim}, {1, 0, 0, 0});
  Tensor comp = Tensor::FromFloats({2, dim}, {0, 1, 0, 0, 5, 5, 5, 5});
  Tensor sinks = Tensor::FromFloats({1}, {-1e30f});
  Tensor idx = Tensor::Empty(DType::kI32, {1, 2});
  idx.data<int32_t>()[0] = 0;
  idx.data<int32_t>()[1] = -1;
  Tensor out = Tensor::Zeros(DType::kF32, {1, 1, dim});
  SparseAttentionArgs args;
  args.q = q.view();
  args.kv = kv.view();
  args.comp_kv = comp.view();
  args.comp_idx = idx.view();
  args.sink = sinks.view();
  args.out = out.view();
  args.window = 1;
  args.scale = 1.0f;
  SparseAttention(args);
  // Keys: raw [1,0,0,0] and entry 0 [0,1,0,0], both score 1: the mean of the two.
  EXPECT_NEAR(out.data<float>()[0], 0.5f, 1e-6);
  EXPECT_NEAR(out.data<float>()[1], 0.5f, 1e-6);
  EXPECT_NEAR(out.data<float>()[2], 0.0f, 1e-6);
}

TEST(CompressPoolTest, WindowAndOverlapBoundaries) {
  // CSA: ratio 2, entry width 1: rows carry [series A | series B].
  const int64_t ratio = 2;
  Tensor kv = Tensor::FromFloats({6, 2}, {1, 10, 2, 20, 3, 30, 4, 40, 5, 50, 6, 60});
  Tensor score = Tensor::FromFloats({6, 2}, {0, 0, 0, std::log(3.0f), 0, 0, 0, 0, 0, 0, 0, 0});
  Tensor out = Tensor::Zeros(DType::kF32, {3, 1});
  CompressPool(kv.view(), score.view(), ratio, /*overlap=*/true, 0, out.view());
  // Entry 0: no series A (weight 0); B slots rows 0, 1 with weights 1/4, 3/4.
  EXPECT_NEAR(out.data<float>()[0], 0.25f * 10 + 0.75f * 20, 1e-5);
  // Entry 1: A = rows 0, 1 channel 0 (1, 2), B = rows 2, 3 channel 1 (30, 40); equal scores.
  EXPECT_NEAR(out.data<float>()[1], (1 + 2 + 30 + 40) / 4.0f, 1e-5);
  EXPECT_NEAR(out.data<float>()[2], (3 + 4 + 50 + 60) / 4.0f, 1e-5);
  // Decode form: entries from 1 on, given the previous window's rows, are the same values.
  Tensor tail = Tensor::Zeros(DType::kF32, {2, 1});
  CompressPool(kv.view(), score.view(), ratio, true, /*first_entry=*/1, tail.view());
  EXPECT_EQ(tail.data<float>()[0], out.data<float>()[1]);
  // HCA (no overlap): each entry pools only its own rows.
  Tensor hca_kv = Tensor::FromFloats({4, 1}, {1, 2, 3, 4});
  Tensor hca_score = Tensor::Zeros(DType::kF32, {4, 1});
  Tensor hca = Tensor::Zeros(DType::kF32, {2, 1});
  CompressPool(hca_kv.view(), hca_score.view(), ratio, false, 0, hca.view());
  EXPECT_NEAR(hca.data<float>()[0], 1.5f, 1e-6);
  EXPECT_NEAR(hca.data<float>()[1], 3.5f, 1e-6);
}

TEST(SwiGluTest, ClampsGateAboveOnlyAndUpBothSides) {
  Tensor gate = Tensor::FromFloats({5}, {20, -20, 1, 20, 0.5f});
  Tensor up = Tensor::FromFloats({5}, {1, 1, 20, -20, 3});
  Tensor out = Tensor::Zeros(DType::kF32, {5});
  SwiGluClamp(gate.view(), up.view(), 10.0f, out.view());
  auto silu = [](double g) { return g / (1 + std::exp(-g)); };
  EXPECT_NEAR(out.data<float>()[0], silu(10), 1e-5);        // gate 20 -> 10
  EXPECT_NEAR(out.data<float>()[1], silu(-20), 1e-9);       // gate -20 kept
  EXPECT_NEAR(out.data<float>()[2], silu(1) * 10, 1e-5);    // up 20 -> 10
  EXPECT_NEAR(out.data<float>()[3], silu(10) * -10, 1e-4);  // both clamped
  EXPECT_NEAR(out.data<float>()[4], silu(0.5) * 3, 1e-6);
}

TEST(SqrtSoftplusTest, MatchesDefinitionAcrossTheThreshold) {
  Tensor x = Tensor::FromFloats({3}, {-3, 0.5f, 25});
  Tensor out = Tensor::Zeros(DType::kF32, {3});
  SqrtSoftplus(x.view(), out.view());
  EXPECT_NEAR(out.data<float>()[0], std::sqrt(std::log1p(std::exp(-3.0))), 1e-6);
  EXPECT_NEAR(out.data<float>()[1], std::sqrt(std::log1p(std::exp(0.5))), 1e-6);
  EXPECT_NEAR(out.data<float>()[2], std::sqrt(25.0), 1e-6);
}

TEST(RopeTest, RotatesTrailingPairsAndInverseUndoes) {
  // head_dim 6, rope dim 4: channels 0, 1 untouched; pairs (2, 3), (4, 5).
  const Tensor original = RandomNormal({2, 3, 6}, 11);
  Tensor x = Tensor::CopyOf(original.view());
  Tensor cos = Tensor::FromFloats({2, 2}, {1, 0.6f, 0, 1});
  Tensor sin = Tensor::FromFloats({2, 2}, {0, 0.8f, 1, 0});
  ApplyRope(x.view(), cos.view(), sin.view(), false);
  const float* a = original.data<float>();
  const float* b = x.data<float>();
  // Row 0 head 0: pair (4, 5) rotated by (0.6, 0.8); row 1: pair (2, 3) by 90 degrees.
  EXPECT_EQ(b[0], a[0]);
  EXPECT_EQ(b[2], a[2]);
  EXPECT_NEAR(b[4], a[4] * 0.6f - a[5] * 0.8f, 1e-6);
  EXPECT_NEAR(b[5], a[5] * 0.6f + a[4] * 0.8f, 1e-6);
  EXPECT_NEAR(b[18 + 2], -a[18 + 3], 1e-6);
  EXPECT_NEAR(b[18 + 3], a[18 + 2], 1e-6);
  ApplyRope(x.view(), cos.view(), sin.view(), true);
  EXPECT_TRUE(v4rl::testing::AllClose(x.view(), original.view(), {.atol = 1e-6, .rtol = 1e-6}));
}

TEST(RmsNormTest, WeightedAndUnweighted) {
  Tensor x = Tensor::FromFloats({1, 4}, {1, 2, 3, 4});
  Tensor w = Tensor::FromFloats({4}, {1, 2, 1, 0.5f});
  Tensor out = Tensor::Zeros(DType::kF32, {1, 4});
  RmsNorm(x.view(), w.view(), 0.0f, out.view());
  const float inv = 1.0f / std::sqrt(30.0f / 4);
  EXPECT_NEAR(out.data<float>()[1], 4 * inv, 1e-6);
  RmsNorm(x.view(), core::TensorView(), 0.0f, out.view());
  EXPECT_NEAR(out.data<float>()[3], 4 * inv, 1e-6);
}

}  // namespace
}  // namespace v4rl::kernels
