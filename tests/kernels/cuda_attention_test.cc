// CUDA sparse attention (window + compressed entries + sink, online softmax) and the compressor's
// gated pool against the CPU references on the same bf16-rounded inputs, odd sizes (gpu label;
// skips without a device).
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/compressor.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/device.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

// bf16 output: half an ulp (2^-9 relative) plus fp32 online-softmax reordering (~1e-6).
constexpr testing::Tolerance kBf16Out{.atol = 2e-4, .rtol = 4e-3};
// Tensor-core path (bf16 inputs, head_dim % 32 == 0): the probabilities are rounded to bf16 for
// P·V as well, up to 2^-9 of each weight: at most ~2^-9 · max|v| absolute on top of kBf16Out.
constexpr testing::Tolerance kTensorCoreOut{.atol = 4e-3, .rtol = 4e-3};
constexpr testing::Tolerance kLse{.atol = 2e-5, .rtol = 2e-6};

enum class Comp { kNone, kIdx, kAllVisible };

struct Sizes {
  int64_t window = 8, q_pos0 = 30, kv_pos0 = 25, num_kv = 22, num_comp = 11, topk = 6;
  bool duplicate_picks = false;  // each row's second pick repeats its first (counted twice)
};

void CheckAttention(int64_t num_heads, int64_t head_dim, Comp comp, uint64_t seed,
                    const Sizes& sizes = {}) {
  const int64_t num_q = 17, window = sizes.window, q_pos0 = sizes.q_pos0;
  const int64_t kv_pos0 = sizes.kv_pos0, num_kv = sizes.num_kv, num_comp = sizes.num_comp;
  const int64_t topk = sizes.topk, ratio = 4;
  const Tensor q = testing::RoundToBf16(RandomNormal({num_q, num_heads, head_dim}, seed));
  const Tensor kv = testing::RoundToBf16(RandomNormal({num_kv, head_dim}, seed + 1));
  const Tensor comp_kv = testing::RoundToBf16(RandomNormal({num_comp, head_dim}, seed + 2));
  const Tensor sink = RandomNormal({num_heads}, seed + 3, 2.0f);
  // Ascending picks with -1 padding; some rows all -1, one pick out of order of padding.
  Tensor idx = Tensor::Empty(DType::kI32, {num_q, topk});
  for (int64_t i = 0; i < num_q; ++i) {
    int64_t filled = 0;
    for (int64_t w = (i % 3); w < num_comp && filled < topk - (i % 4); w += 1 + (i % 2)) {
      idx.data<int32_t>()[i * topk + filled++] = static_cast<int32_t>(w);
    }
    if (sizes.duplicate_picks && filled >= 2) {
      idx.data<int32_t>()[i * topk + 1] = idx.data<int32_t>()[i * topk];
    }
    while (filled < topk) idx.data<int32_t>()[i * topk + filled++] = -1;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  cpu::SparseAttentionParams<float> p;
  p.q = q.data<float>();
  p.kv = kv.data<float>();
  p.sink = sink.data<float>();
  Tensor want = Tensor::Empty(DType::kF32, {num_q, num_heads, head_dim});
  Tensor want_lse = Tensor::Empty(DType::kF32, {num_q, num_heads});
  p.out = want.data<float>();
  p.lse = want_lse.data<float>();
  p.num_q = num_q;
  p.num_heads = num_heads;
  p.head_dim = head_dim;
  p.num_kv = num_kv;
  p.q_pos0 = q_pos0;
  p.kv_pos0 = kv_pos0;
  p.window = window;
  p.scale = scale;
  if (comp != Comp::kNone) {
    p.comp_kv = comp_kv.data<float>();
    p.num_comp = num_comp;
    if (comp == Comp::kIdx) {
      p.comp_idx = idx.data<int32_t>();
      p.comp_topk = topk;
    } else {
      p.comp_ratio = ratio;
    }
  }
  cpu::SparseAttentionRef(p, nullptr);

  const Tensor dq = testing::ToDevice(q, DType::kBF16);
  const Tensor dkv = testing::ToDevice(kv, DType::kBF16);
  const Tensor dcomp = testing::ToDevice(comp_kv, DType::kBF16);
  const Tensor didx = testing::ToDevice(idx, DType::kI32);
  const Tensor dsink = testing::ToDevice(sink, DType::kF32);
  const Tensor out = Tensor::Empty(DType::kBF16, {num_q, num_heads, head_dim}, DeviceAllocator());
  const Tensor lse = Tensor::Empty(DType::kF32, {num_q, num_heads}, DeviceAllocator());
  SparseAttentionArgs a;
  a.q = dq.view();
  a.kv = dkv.view();
  a.sink = dsink.view();
  a.out = out.view();
  a.lse = lse.view();
  a.q_pos0 = q_pos0;
  a.kv_pos0 = kv_pos0;
  a.window = window;
  a.scale = scale;
  if (comp != Comp::kNone) {
    a.comp_kv = dcomp.view();
    if (comp == Comp::kIdx) {
      a.comp_idx = didx.view();
    } else {
      a.comp_ratio = ratio;
    }
  }
  ASSERT_TRUE(SparseAttention(a).ok());
  const std::string tag = "attention heads=" + std::to_string(num_heads) + " D=" +
                          std::to_string(head_dim) +
                          (comp == Comp::kNone ? " window only"
                                               : comp == Comp::kIdx ? " + comp_idx" : " + all visible");
  const bool tensor_cores = head_dim % 32 == 0 && head_dim <= 512;
  EXPECT_TRUE(testing::CloseAndReport(tag + (tensor_cores ? " (tensor cores) out" : " out"),
                                      testing::ToHost(out.view()).view(), want.view(),
                                      tensor_cores ? kTensorCoreOut : kBf16Out));
  EXPECT_TRUE(testing::CloseAndReport(tag + " lse", testing::ToHost(lse.view()).view(),
                                      want_lse.view(), kLse));
}

TEST(CudaAttention, WindowOnly) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckAttention(5, 72, Comp::kNone, 1);
}

TEST(CudaAttention, WindowPlusSelectedCompressedEntries) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckAttention(11, 200, Comp::kIdx, 11);  // two head groups (8 + 3)
  CheckAttention(3, 512, Comp::kIdx, 21);   // V4 head_dim: > 48 KiB of shared memory
}

TEST(CudaAttention, WindowPlusAllVisibleCompressedEntries) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckAttention(16, 96, Comp::kAllVisible, 31);
}

TEST(CudaAttention, ManyKeyTilesAndHeadGroups) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // 128-row window plus 150 of 300 entries: several 64-key tiles, some all -1 slots.
  const Sizes large{.window = 128, .q_pos0 = 1000, .kv_pos0 = 880, .num_kv = 137,
                    .num_comp = 300, .topk = 150};
  CheckAttention(16, 512, Comp::kIdx, 41, large);  // V4's head shape, one group of 16
  CheckAttention(20, 64, Comp::kIdx, 51, large);   // two head groups (16 + 4)
  CheckAttention(7, 32, Comp::kAllVisible, 61, large);
  CheckAttention(5, 200, Comp::kIdx, 71, large);   // CUDA-core path, many tiles
}

// head_dim 512 with no picks, every visible entry, or picks covering at least half the entries
// takes the four-query kernel (attention_quad_tc.cu: 17 queries = four blocks of four and one of
// one, key lists shared, weights per query); sparse picks keep the one-query kernel.
TEST(CudaAttention, FourQueryKernelAtV4HeadDim) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Sizes large{
      .window = 128, .q_pos0 = 1000, .kv_pos0 = 880, .num_kv = 137, .num_comp = 300, .topk = 150};
  CheckAttention(16, 512, Comp::kNone, 81, large);
  CheckAttention(16, 512, Comp::kAllVisible, 82, large);
  CheckAttention(20, 512, Comp::kAllVisible, 83);  // two head groups (16 + 4), one key tile
  Sizes duplicates = large;
  duplicates.duplicate_picks = true;
  CheckAttention(16, 512, Comp::kIdx, 84, duplicates);
  Sizes sparse = large;
  sparse.topk = 40;  // 40 of 300 entries: the one-query kernel
  CheckAttention(16, 512, Comp::kIdx, 85, sparse);
}

TEST(CudaAttention, RejectsQueriesBeyondKv) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor q = Tensor::Empty(DType::kBF16, {4, 2, 8}, DeviceAllocator());
  const Tensor kv = Tensor::Empty(DType::kBF16, {3, 8}, DeviceAllocator());
  const Tensor sink = Tensor::Empty(DType::kF32, {2}, DeviceAllocator());
  SparseAttentionArgs a;
  a.q = q.view();
  a.kv = kv.view();
  a.sink = sink.view();
  a.out = q.view();
  a.window = 4;
  EXPECT_FALSE(SparseAttention(a).ok());
}

void CheckPool(int64_t ratio, bool overlap, int64_t head_dim, int64_t num_windows,
               int64_t first_entry, uint64_t seed) {
  const int64_t width = (overlap ? 2 : 1) * head_dim;
  const Tensor kv = testing::RoundToBf16(RandomNormal({num_windows * ratio, width}, seed));
  const Tensor score = testing::RoundToBf16(RandomNormal({num_windows * ratio, width}, seed + 1, 3.0f));
  Tensor want = Tensor::Empty(DType::kF32, {num_windows - first_entry, head_dim});
  cpu::CompressPoolRef(kv.data<float>(), score.data<float>(), num_windows, ratio, head_dim,
                       overlap, first_entry, want.data<float>(), nullptr);
  const Tensor dkv = testing::ToDevice(kv, DType::kBF16);
  const Tensor dscore = testing::ToDevice(score, DType::kBF16);
  const Tensor out =
      Tensor::Empty(DType::kBF16, {num_windows - first_entry, head_dim}, DeviceAllocator());
  ASSERT_TRUE(CompressPool(dkv.view(), dscore.view(), ratio, overlap, first_entry, out.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport(
      "compress pool ratio=" + std::to_string(ratio) + (overlap ? " overlap" : ""),
      testing::ToHost(out.view()).view(), want.view(), kBf16Out));
}

TEST(CudaCompressor, PoolMatchesCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckPool(4, /*overlap=*/true, 77, 17, 0, 1);    // CSA: entry 0 without series A
  CheckPool(4, /*overlap=*/true, 77, 17, 5, 2);    // later entries only
  CheckPool(16, /*overlap=*/false, 45, 5, 0, 3);   // HCA-like
  CheckPool(128, /*overlap=*/false, 33, 3, 1, 4);
}

// The batched pooling (one launch for the completed windows of many sequences) gives exactly
// CompressPool's values per sequence: two "sequences" of 3 and 4 windows in one work buffer,
// the first from entry 1 (its window 0 is the previous window), the second from entry 0.
TEST(CudaCompressor, PoolEntriesMatchesPerSequencePool) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (const bool overlap : {true, false}) {
    const int64_t ratio = 4, head_dim = 37, width = (overlap ? 2 : 1) * head_dim;
    const int64_t windows_a = 3, windows_b = 4, rows = (windows_a + windows_b) * ratio;
    const Tensor kv = testing::ToDevice(RandomNormal({rows, width}, 91), DType::kBF16);
    const Tensor score = testing::ToDevice(RandomNormal({rows, width}, 92, 3.0f), DType::kF32);
    const int64_t first_a = overlap ? 1 : 0;
    const int64_t count = windows_a - first_a + windows_b;
    const Tensor want = Tensor::Empty(DType::kBF16, {count, head_dim}, DeviceAllocator());
    const int64_t split = (windows_a - first_a);
    ASSERT_TRUE(CompressPool(kv.view().Slice(0, 0, windows_a * ratio),
                             score.view().Slice(0, 0, windows_a * ratio), ratio, overlap, first_a,
                             want.view().Slice(0, 0, split))
                    .ok());
    ASSERT_TRUE(CompressPool(kv.view().Slice(0, windows_a * ratio, rows),
                             score.view().Slice(0, windows_a * ratio, rows), ratio, overlap, 0,
                             want.view().Slice(0, split, count))
                    .ok());
    std::vector<PoolEntry> entries;
    for (int64_t w = first_a; w < windows_a; ++w) entries.push_back({int32_t(w), overlap && w >= 1});
    for (int64_t w = 0; w < windows_b; ++w) {
      entries.push_back({int32_t(windows_a + w), overlap && w >= 1});
    }
    const Tensor got = Tensor::Empty(DType::kBF16, {count, head_dim}, DeviceAllocator());
    ASSERT_TRUE(CompressPoolEntries(kv.view(), score.view(), ratio, overlap, entries, got.view()).ok());
    const Tensor got_host = testing::ToHost(got.view()), want_host = testing::ToHost(want.view());
    for (int64_t i = 0; i < got_host.numel(); ++i) {
      ASSERT_EQ(got_host.data<float>()[i], want_host.data<float>()[i]) << "overlap " << overlap << " " << i;
    }
  }
}

}  // namespace
}  // namespace v4rl::kernels::cuda
