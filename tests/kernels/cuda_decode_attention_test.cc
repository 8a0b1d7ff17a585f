// The batched single-token decode kernels (kernels/cuda/decode_attention.h) against direct
// double-precision references at V4-like shapes the model fixtures do not reach: 20 query heads
// of 512 (two 16-head groups, the 16-byte shared-memory path), a 128-row ring that has wrapped,
// top-k compressed picks with -1 padding, all visible entries (HCA), one long item whose keys are
// split over many blocks; the indexer's scores with 20 heads of 128 (two 16-head register
// chunks) and -inf padding. gpu label; skips without a device.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

// bf16 output of the tensor-core tile: probabilities rounded to bf16 for P·V (as the prefill
// kernel, tests/kernels/cuda_attention_test.cc), then half an ulp of the output.
constexpr testing::Tolerance kTensorCoreOut{.atol = 4e-3, .rtol = 4e-3};

struct Item {
  int64_t position, num_comp;
  std::vector<int32_t> picks;  // empty: every entry (HCA)
};

// Softmax over the item's keys with the sink, in double: keys are the ring rows of positions
// t - min(t, W - 1) .. t - 1, the item's own row, then its compressed entries (picks or all).
std::vector<float> Reference(const float* q, const Tensor& ring, const float* own,
                             const Tensor& comp, const Item& it, const std::vector<float>& sink,
                             int64_t heads, int64_t dim, int64_t window, float scale) {
  std::vector<const float*> keys;
  const int64_t t = it.position, cached = std::min(t, window - 1);
  for (int64_t p = t - cached; p < t; ++p) keys.push_back(ring.data<float>() + (p % window) * dim);
  keys.push_back(own);
  if (it.picks.empty()) {
    for (int64_t e = 0; e < it.num_comp; ++e) keys.push_back(comp.data<float>() + e * dim);
  } else {
    for (int32_t w : it.picks) {
      if (w >= 0 && w < it.num_comp) keys.push_back(comp.data<float>() + int64_t{w} * dim);
    }
  }
  std::vector<float> out(heads * dim);
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<double> s(keys.size());
    double mx = sink[h];
    for (size_t j = 0; j < keys.size(); ++j) {
      double d = 0;
      for (int64_t c = 0; c < dim; ++c) d += double(q[h * dim + c]) * keys[j][c];
      s[j] = d * scale;
      mx = std::max(mx, s[j]);
    }
    double denom = std::exp(sink[h] - mx);
    for (double& v : s) denom += (v = std::exp(v - mx));
    for (int64_t c = 0; c < dim; ++c) {
      double acc = 0;
      for (size_t j = 0; j < keys.size(); ++j) acc += s[j] * keys[j][c];
      out[h * dim + c] = static_cast<float>(acc / denom);
    }
  }
  return out;
}

void CheckDecodeAttention(int64_t heads, int64_t dim) {
  const int64_t window = 128;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  // Items: early (ring not full), wrapped ring with top-k picks (-1 and out-of-range padding),
  // HCA with every entry, and two long ones (the splits path when alone below; the last has 237
  // tiles: more splits than the combine's 128 a round of loads).
  const std::vector<Item> items = {
      {5, 1, {0, -1, -1}}, {300, 75, {3, 70, 11, -1, 74}}, {1000, 7, {}}, {4000, 1000, {}},
      {20000, 15000, {}},
  };
  const Tensor sink_host = RandomNormal({heads}, 90, 0.5f);
  std::vector<float> sink(sink_host.data<float>(), sink_host.data<float>() + heads);
  const Tensor d_sink = testing::ToDevice(sink_host, DType::kF32);
  std::vector<Tensor> host_q, host_ring, host_own, host_comp, d_q, d_ring, d_own, d_comp, d_out;
  std::vector<Tensor> d_picks;
  for (size_t i = 0; i < items.size(); ++i) {
    const uint64_t seed = 100 + 10 * i;
    host_q.push_back(testing::RoundToBf16(RandomNormal({heads, dim}, seed)));
    host_ring.push_back(testing::RoundToBf16(RandomNormal({window, dim}, seed + 1)));
    host_own.push_back(testing::RoundToBf16(RandomNormal({dim}, seed + 2)));
    host_comp.push_back(testing::RoundToBf16(RandomNormal({items[i].num_comp, dim}, seed + 3)));
    d_q.push_back(testing::ToDevice(host_q[i], DType::kBF16));
    d_ring.push_back(testing::ToDevice(host_ring[i], DType::kBF16));
    d_own.push_back(testing::ToDevice(host_own[i], DType::kBF16));
    d_comp.push_back(testing::ToDevice(host_comp[i], DType::kBF16));
    d_out.push_back(Tensor::Empty(DType::kBF16, {heads, dim}, DeviceAllocator()));
    Tensor picks = Tensor::Empty(DType::kI32, {std::max<int64_t>(1, items[i].picks.size())});
    std::copy(items[i].picks.begin(), items[i].picks.end(), picks.data<int32_t>());
    d_picks.push_back(testing::ToDevice(picks, DType::kI32));
  }
  auto run = [&](const std::vector<size_t>& which, const std::string& tag) {
    std::vector<DecodeAttentionItem> batch;
    for (size_t i : which) {
      DecodeAttentionItem it;
      it.q = d_q[i].data<uint16_t>();
      it.ring = d_ring[i].data<uint16_t>();
      it.own_kv = d_own[i].data<uint16_t>();
      it.comp = d_comp[i].data<uint16_t>();
      it.num_comp = items[i].num_comp;
      if (!items[i].picks.empty()) {
        it.comp_idx = d_picks[i].data<int32_t>();
        it.comp_topk = static_cast<int64_t>(items[i].picks.size());
      }
      it.out = d_out[i].data<uint16_t>();
      it.position = items[i].position;
      batch.push_back(it);
    }
    ASSERT_TRUE(DecodeAttention(batch, d_sink.data<float>(), heads, dim, window, scale).ok());
    for (size_t i : which) {
      const std::vector<float> want =
          Reference(host_q[i].data<float>(), host_ring[i], host_own[i].data<float>(),
                    host_comp[i], items[i], sink, heads, dim, window, scale);
      const Tensor want_t = Tensor::FromFloats({heads, dim}, want);
      EXPECT_TRUE(testing::CloseAndReport(tag + " item " + std::to_string(i),
                                          testing::ToHost(d_out[i].view()).view(), want_t.view(),
                                          kTensorCoreOut));
    }
  };
  const std::string shape = std::to_string(heads) + "x" + std::to_string(dim);
  run({0, 1, 2, 3, 4}, "decode attention " + shape + " batch of 5");
  run({3}, "decode attention " + shape + " long item alone (key splits)");
  run({4}, "decode attention " + shape + " longer item alone (over 128 key splits)");
}

TEST(CudaDecodeAttention, TwentyHeadsOf512WrappedRingPicksAndSplits) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckDecodeAttention(20, 512);  // two head groups (16 + 4)
}

TEST(CudaDecodeAttention, ThreeHeadsOf96) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckDecodeAttention(3, 96);  // padded head rows, an odd number of output n-tiles per warp
}

// Scores of items with num_keys[i] keys in rows of ld against a double-precision reference;
// padding past num_keys must be -inf.
void CheckDecodeIndexer(int64_t heads, int64_t dim, int64_t ld,
                        const std::vector<int64_t>& num_keys) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const int64_t rows = static_cast<int64_t>(num_keys.size());
  std::vector<Tensor> host_q, host_w, host_k, d_q, d_w, d_k;
  const Tensor scores = Tensor::Empty(DType::kF32, {rows, ld}, DeviceAllocator());
  std::vector<DecodeIndexerItem> items;
  for (int64_t i = 0; i < rows; ++i) {
    host_q.push_back(testing::RoundToBf16(RandomNormal({heads, dim}, 200 + i)));
    host_w.push_back(RandomNormal({heads}, 210 + i));
    host_k.push_back(testing::RoundToBf16(RandomNormal({num_keys[i], dim}, 220 + i)));
    d_q.push_back(testing::ToDevice(host_q[i], DType::kBF16));
    d_w.push_back(testing::ToDevice(host_w[i], DType::kF32));
    d_k.push_back(testing::ToDevice(host_k[i], DType::kBF16));
    DecodeIndexerItem it;
    it.q = d_q[i].data<uint16_t>();
    it.weights = d_w[i].data<float>();
    it.keys = d_k[i].data<uint16_t>();
    it.scores = scores.data<float>() + i * ld;
    it.num_keys = num_keys[i];
    items.push_back(it);
  }
  ASSERT_TRUE(DecodeIndexerScores(items, heads, dim, ld, scale).ok());
  const Tensor got = testing::ToHost(scores.view());
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t e = 0; e < ld; ++e) {
      const float g = got.data<float>()[i * ld + e];
      if (e >= num_keys[i]) {
        ASSERT_TRUE(std::isinf(g) && g < 0) << "row " << i << " padding score " << e << " is " << g;
        continue;
      }
      double sum = 0;
      for (int64_t h = 0; h < heads; ++h) {
        double d = 0;
        for (int64_t c = 0; c < dim; ++c) {
          d += double(host_q[i].data<float>()[h * dim + c]) * host_k[i].data<float>()[e * dim + c];
        }
        sum += std::max(d, 0.0) * scale * host_w[i].data<float>()[h];
      }
      ASSERT_NEAR(g, sum, 1e-4 + 1e-5 * std::fabs(sum)) << "row " << i << " score " << e;
    }
  }
}

TEST(CudaDecodeIndexer, TwentyHeadsOf128WithPadding) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckDecodeIndexer(20, 128, 300, {1, 299, 150});
}

TEST(CudaDecodeIndexer, OneLongRowLoopsOverTiles) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // 1,563 tiles of 64 keys for one item: more than a block per tile would keep busy (8 per SM),
  // so blocks take several tiles each through the double buffer.
  CheckDecodeIndexer(16, 128, 100003, {99995});
}

// Rows are copied 16 bytes at a time: a query two bytes off is refused, naming the item.
TEST(CudaDecodeAttention, MisalignedRowsAreInvalidArgument) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t heads = 4, dim = 64, window = 8;
  const Tensor q = Tensor::Empty(DType::kBF16, {heads * dim + 8}, DeviceAllocator());
  const Tensor ring = Tensor::Empty(DType::kBF16, {window, dim}, DeviceAllocator());
  const Tensor own = Tensor::Empty(DType::kBF16, {dim}, DeviceAllocator());
  const Tensor out = Tensor::Empty(DType::kBF16, {heads, dim}, DeviceAllocator());
  const Tensor sink = Tensor::Empty(DType::kF32, {heads}, DeviceAllocator());
  DecodeAttentionItem it;
  it.q = q.data<uint16_t>() + 1;
  it.ring = ring.data<uint16_t>();
  it.own_kv = own.data<uint16_t>();
  it.out = out.data<uint16_t>();
  it.position = 3;
  const absl::Status status =
      DecodeAttention({&it, 1}, sink.data<float>(), heads, dim, window, 0.125f);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("item 0's q"), std::string::npos) << status;

  const Tensor weights = Tensor::Empty(DType::kF32, {heads}, DeviceAllocator());
  const Tensor keys = Tensor::Empty(DType::kBF16, {5, dim}, DeviceAllocator());
  const Tensor scores = Tensor::Empty(DType::kF32, {5}, DeviceAllocator());
  DecodeIndexerItem index_item;
  index_item.q = q.data<uint16_t>() + 1;
  index_item.weights = weights.data<float>();
  index_item.keys = keys.data<uint16_t>();
  index_item.scores = scores.data<float>();
  index_item.num_keys = 5;
  const absl::Status index_status = DecodeIndexerScores({&index_item, 1}, heads, dim, 5, 0.1f);
  EXPECT_EQ(index_status.code(), absl::StatusCode::kInvalidArgument) << index_status;
  EXPECT_NE(index_status.message().find("item 0's q and keys"), std::string::npos)
      << index_status;
}

}  // namespace
}  // namespace v4rl::kernels::cuda
