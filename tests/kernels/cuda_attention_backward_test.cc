// CUDA sparse-attention backward (flash-style from the saved lse and output) against
// kernels/cpu/attention_backward.h on odd sizes: window + top-k compressed entries (with skipped
// -1 ids) in f32, and window + every visible compressed entry with bf16 inputs; the tensor-core
// kernel against the same reference within bf16 rounding of P and dS (gpu label).
#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_backward.h"
#include "kernels/cuda/attention_backward.h"
#include "kernels/cuda/device.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

struct Case {
  const char* name;
  int64_t num_q, heads, head_dim, num_kv, num_comp, topk, q_pos0, kv_pos0, window, ratio;
  DType dtype;
  bool tensor_cores = false;
  bool duplicate_picks = false;  // each query's largest pick replaced by its second largest
};

void RunCase(const Case& c) {
  const Tensor q = testing::RoundToBf16(RandomNormal({c.num_q, c.heads, c.head_dim}, 1));
  const Tensor kv = testing::RoundToBf16(RandomNormal({c.num_kv, c.head_dim}, 2));
  const Tensor comp = testing::RoundToBf16(RandomNormal({c.num_comp, c.head_dim}, 3));
  const Tensor sink = RandomNormal({c.heads}, 4);
  const Tensor dout = testing::RoundToBf16(RandomNormal({c.num_q, c.heads, c.head_dim}, 5));
  Tensor idx = Tensor::Empty(DType::kI32, {c.num_q, std::max<int64_t>(c.topk, 1)});
  for (int64_t i = 0; i < c.num_q; ++i) {
    const int64_t visible = (c.q_pos0 + i + 1) / std::max<int64_t>(c.ratio, 1);
    for (int64_t j = 0; j < c.topk; ++j) {
      // Ascending distinct visible ids, -1 padding past the visible count.
      idx.data<int32_t>()[i * c.topk + j] =
          j < std::min(visible, c.num_comp) ? static_cast<int32_t>((j * 7 + i) % std::min(visible, c.num_comp)) : -1;
    }
    std::sort(idx.data<int32_t>() + i * c.topk, idx.data<int32_t>() + (i + 1) * c.topk);
    // Make the valid ids distinct: keep the first of each run, others -1.
    for (int64_t j = c.topk - 1; j > 0; --j) {
      int32_t* row = idx.data<int32_t>() + i * c.topk;
      if (row[j] == row[j - 1]) row[j] = -1;
    }
    std::sort(idx.data<int32_t>() + i * c.topk, idx.data<int32_t>() + (i + 1) * c.topk);
    int32_t* row = idx.data<int32_t>() + i * c.topk;
    if (c.duplicate_picks && c.topk >= 2 && row[c.topk - 2] >= 0) row[c.topk - 1] = row[c.topk - 2];
  }
  const bool use_idx = c.topk > 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  Tensor out = Tensor::Empty(DType::kF32, {c.num_q, c.heads, c.head_dim});
  Tensor lse = Tensor::Empty(DType::kF32, {c.num_q, c.heads});
  cpu::SparseAttentionParams<float> fp;
  fp.q = q.data<float>(), fp.kv = kv.data<float>(), fp.comp_kv = comp.data<float>();
  fp.comp_idx = use_idx ? idx.data<int32_t>() : nullptr;
  fp.sink = sink.data<float>(), fp.out = out.data<float>(), fp.lse = lse.data<float>();
  fp.num_q = c.num_q, fp.num_heads = c.heads, fp.head_dim = c.head_dim, fp.num_kv = c.num_kv;
  fp.num_comp = c.num_comp, fp.comp_topk = c.topk, fp.q_pos0 = c.q_pos0, fp.kv_pos0 = c.kv_pos0;
  fp.window = c.window, fp.comp_ratio = c.ratio, fp.scale = scale;
  cpu::SparseAttentionRef(fp, nullptr);
  Tensor want_dq = Tensor::Zeros(DType::kF32, {c.num_q, c.heads, c.head_dim});
  Tensor want_dkv = Tensor::Zeros(DType::kF32, {c.num_kv, c.head_dim});
  Tensor want_dcomp = Tensor::Zeros(DType::kF32, {c.num_comp, c.head_dim});
  Tensor want_dsink = Tensor::Zeros(DType::kF32, {c.heads});
  cpu::SparseAttentionBackwardParams<float> bp;
  bp.q = fp.q, bp.kv = fp.kv, bp.comp_kv = fp.comp_kv, bp.comp_idx = fp.comp_idx;
  bp.sink = fp.sink, bp.dout = dout.data<float>(), bp.dq = want_dq.data<float>();
  bp.dkv = want_dkv.data<float>(), bp.dcomp_kv = want_dcomp.data<float>();
  bp.dsink = want_dsink.data<float>();
  bp.num_q = c.num_q, bp.num_heads = c.heads, bp.head_dim = c.head_dim, bp.num_kv = c.num_kv;
  bp.num_comp = c.num_comp, bp.comp_topk = c.topk, bp.q_pos0 = c.q_pos0, bp.kv_pos0 = c.kv_pos0;
  bp.window = c.window, bp.comp_ratio = c.ratio, bp.scale = scale;
  cpu::SparseAttentionBackwardRef(bp, nullptr);

  const Tensor dq = Tensor::Empty(DType::kF32, {c.num_q, c.heads, c.head_dim}, DeviceAllocator());
  const Tensor dkv = Tensor::Empty(DType::kF32, {c.num_kv, c.head_dim}, DeviceAllocator());
  const Tensor dcomp = Tensor::Empty(DType::kF32, {c.num_comp, c.head_dim}, DeviceAllocator());
  const Tensor dsink = Tensor::Empty(DType::kF32, {c.heads}, DeviceAllocator());
  for (const Tensor* t : {&dq, &dkv, &dcomp, &dsink}) {
    ASSERT_TRUE(Copy(Tensor::Zeros(DType::kF32, t->view().shape_vector()).view(), t->view()).ok());
  }
  const Tensor qd = testing::ToDevice(q, c.dtype), kvd = testing::ToDevice(kv, c.dtype),
               compd = testing::ToDevice(comp, c.dtype), doutd = testing::ToDevice(dout, c.dtype),
               outd = testing::ToDevice(out, DType::kF32), lsed = testing::ToDevice(lse, DType::kF32),
               sinkd = testing::ToDevice(sink, DType::kF32),
               idxd = testing::ToDevice(idx, DType::kI32);
  SparseAttentionBackwardArgs args;
  args.q = qd.view(), args.kv = kvd.view(), args.comp_kv = compd.view();
  if (use_idx) args.comp_idx = idxd.view();
  args.sink = sinkd.view(), args.out = outd.view(), args.lse = lsed.view(), args.dout = doutd.view();
  args.dq = dq.view(), args.dkv = dkv.view(), args.dcomp_kv = dcomp.view(), args.dsink = dsink.view();
  args.q_pos0 = c.q_pos0, args.kv_pos0 = c.kv_pos0, args.window = c.window;
  args.comp_ratio = c.ratio, args.scale = scale;
  args.tensor_cores = c.tensor_cores;
  const absl::Status status = SparseAttentionBackward(args);
  ASSERT_TRUE(status.ok()) << status;
  const std::string name = std::string("attention backward ") + c.name;
  if (c.tensor_cores) {
    // P and dS rounded to bf16 before the second products (2^-9 relative each), fp32 sums:
    // bounded by the relative error by norm of each gradient.
    constexpr double kTensorCoreByNorm = 1.5e-2;
    const struct {
      const char* what;
      const Tensor& got;
      const Tensor& want;
    } checks[] = {{"dq", dq, want_dq},
                  {"dkv", dkv, want_dkv},
                  {"dcomp_kv", dcomp, want_dcomp},
                  {"dsink", dsink, want_dsink}};
    for (const auto& [what, got, want] : checks) {
      const Tensor host = testing::ToHost(got.view());
      std::printf("[measured] %s %s: %s (bound %.1e by norm)\n", name.c_str(), what,
                  testing::Describe(testing::Compare(host.view(), want.view())).c_str(),
                  kTensorCoreByNorm);
      EXPECT_TRUE(testing::RelErrorByNormAtMost(host.view(), want.view(), kTensorCoreByNorm))
          << name << " " << what;
    }
    return;
  }
  // fp32 sums in other orders (and atomics for the key rows) than the CPU's.
  const testing::Tolerance tol{.atol = 2e-5, .rtol = 2e-4};
  EXPECT_TRUE(testing::CloseAndReport(name + " dq", testing::ToHost(dq.view()).view(), want_dq.view(), tol));
  EXPECT_TRUE(testing::CloseAndReport(name + " dkv", testing::ToHost(dkv.view()).view(), want_dkv.view(), tol));
  EXPECT_TRUE(testing::CloseAndReport(name + " dcomp_kv", testing::ToHost(dcomp.view()).view(), want_dcomp.view(), tol));
  EXPECT_TRUE(testing::CloseAndReport(name + " dsink", testing::ToHost(dsink.view()).view(), want_dsink.view(), tol));
}

TEST(CudaAttentionBackward, WindowAndTopKCompressedF32) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  RunCase({"f32 window+topk", /*num_q=*/23, /*heads=*/5, /*head_dim=*/72, /*num_kv=*/31,
           /*num_comp=*/9, /*topk=*/5, /*q_pos0=*/8, /*kv_pos0=*/0, /*window=*/9, /*ratio=*/4,
           DType::kF32});
}

TEST(CudaAttentionBackward, WindowAndVisibleCompressedBf16Offset) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  RunCase({"bf16 window+visible", /*num_q=*/19, /*heads=*/3, /*head_dim=*/160, /*num_kv=*/25,
           /*num_comp=*/4, /*topk=*/0, /*q_pos0=*/13, /*kv_pos0=*/7, /*window=*/6, /*ratio=*/8,
           DType::kBF16});
}

TEST(CudaAttentionBackward, TensorCoresWindowAndTopKTwoHeadGroups) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  RunCase({"tensor cores window+topk", /*num_q=*/23, /*heads=*/20, /*head_dim=*/64, /*num_kv=*/31,
           /*num_comp=*/9, /*topk=*/5, /*q_pos0=*/8, /*kv_pos0=*/0, /*window=*/9, /*ratio=*/4,
           DType::kBF16, /*tensor_cores=*/true});
}

TEST(CudaAttentionBackward, TensorCoresSeveralKeyTilesOddColumnTiles) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // ~118 keys a query (two tiles of 64), head_dim 96: three output n-tiles per warp.
  RunCase({"tensor cores two tiles", /*num_q=*/40, /*heads=*/3, /*head_dim=*/96, /*num_kv=*/150,
           /*num_comp=*/30, /*topk=*/0, /*q_pos0=*/100, /*kv_pos0=*/0, /*window=*/90,
           /*ratio=*/4, DType::kBF16, /*tensor_cores=*/true});
}

TEST(CudaAttentionBackward, TensorCoresFourKeyTilesDuplicatePicks17Queries) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // 150 window rows + 60 picks (skipped -1 ids and one duplicate each) = 210 keys: four tiles,
  // the last partial, walked from tile (query % 4) with the next tile's gather in flight.
  Case c{"tensor cores four tiles, duplicate picks",
         /*num_q=*/17,
         /*heads=*/16,
         /*head_dim=*/96,
         /*num_kv=*/400,
         /*num_comp=*/90,
         /*topk=*/60,
         /*q_pos0=*/300,
         /*kv_pos0=*/0,
         /*window=*/150,
         /*ratio=*/4,
         DType::kBF16,
         /*tensor_cores=*/true};
  c.duplicate_picks = true;
  RunCase(c);
}

// V4's head shape (16 heads of 512): picks covering most of the entries go to the four-query
// kernel (33 queries: the last block has one), sparse picks to the one-query kernel; duplicates
// in both. Then every visible entry with 20 heads (two head groups, 16 + 4) on the four-query
// kernel.
TEST(CudaAttentionBackward, TensorCoresV4HeadsFourQueryAndOneQueryKernels) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (const int64_t topk : {48, 20}) {  // of 64 entries: four-query kernel, then one-query kernel
    Case c{topk == 48 ? "tensor cores V4 heads, four queries" : "tensor cores V4 heads, one query",
           /*num_q=*/33,
           /*heads=*/16,
           /*head_dim=*/512,
           /*num_kv=*/300,
           /*num_comp=*/64,
           topk,
           /*q_pos0=*/250,
           /*kv_pos0=*/0,
           /*window=*/128,
           /*ratio=*/4,
           DType::kBF16,
           /*tensor_cores=*/true};
    c.duplicate_picks = true;
    RunCase(c);
  }
  RunCase({"tensor cores V4 heads x 20, every visible entry", /*num_q=*/30, /*heads=*/20,
           /*head_dim=*/512, /*num_kv=*/290, /*num_comp=*/70, /*topk=*/0, /*q_pos0=*/250,
           /*kv_pos0=*/10, /*window=*/128, /*ratio=*/4, DType::kBF16, /*tensor_cores=*/true});
}

TEST(CudaAttentionBackward, TensorCoresRejectF32Inputs) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor q = Tensor::Empty(DType::kF32, {2, 4, 64}, DeviceAllocator());
  const Tensor kv = Tensor::Empty(DType::kF32, {2, 64}, DeviceAllocator());
  const Tensor lse = Tensor::Empty(DType::kF32, {2, 4}, DeviceAllocator());
  const Tensor sink = Tensor::Empty(DType::kF32, {4}, DeviceAllocator());
  const Tensor dkv = Tensor::Empty(DType::kF32, {2, 64}, DeviceAllocator());
  SparseAttentionBackwardArgs args;
  args.q = args.out = args.dout = args.dq = q.view();
  args.kv = kv.view(), args.dkv = dkv.view(), args.lse = lse.view(), args.sink = sink.view();
  args.window = 4, args.scale = 0.125f, args.tensor_cores = true;
  const absl::Status status = SparseAttentionBackward(args);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("tensor_cores needs bf16"), std::string::npos) << status;
}

TEST(CudaAttentionBackward, RejectsTooManyHeads) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor q = Tensor::Empty(DType::kF32, {2, 33, 8}, DeviceAllocator());
  SparseAttentionBackwardArgs args;
  args.q = q.view();
  EXPECT_FALSE(SparseAttentionBackward(args).ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
