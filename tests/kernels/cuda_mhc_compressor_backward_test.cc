// CUDA MoE combine/gather backward (reference loops written here), mHC backward (gates +
// Sinkhorn, hc_head gate, collapse, expand-and-mix) and compressor pool backward (CSA overlapping
// and HCA plain windows) against kernels/cpu/mhc_backward.h and kernels/cpu/compressor_backward.h
// on odd sizes; gradients start from random values to check that they are added to, and the
// overwriting forms equal adding to zeros bit for bit (gpu label; skips without a device).
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cpu/compressor_backward.h"
#include "kernels/cpu/mhc_backward.h"
#include "kernels/cuda/compressor_backward.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise_backward.h"
#include "kernels/cuda/expert_backward.h"
#include "kernels/cuda/mhc_backward.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;
using testing::RandomUniform;

// A CPU gradient buffer with random contents and its device copy (f32).
struct Grad {
  Tensor host, device;
  Grad(const core::Shape& shape, uint64_t seed)
      : host(RandomNormal(shape, seed)), device(testing::ToDevice(host, DType::kF32)) {}
  float* cpu() { return host.data<float>(); }
  ::testing::AssertionResult Check(const std::string& name, const testing::Tolerance& tol) {
    return testing::CloseAndReport(name, testing::ToHost(device.view()).view(), host.view(), tol);
  }
};

constexpr testing::Tolerance kTol{.atol = 1e-5, .rtol = 1e-4};

// A device f32 tensor of `shape` with every element `value`.
Tensor DeviceFilled(const core::Shape& shape, float value) {
  Tensor host = Tensor::Empty(DType::kF32, shape);
  for (int64_t i = 0; i < host.numel(); ++i) host.data<float>()[i] = value;
  return testing::ToDevice(host, DType::kF32);
}

// Whether two device f32 tensors of one shape hold the same bits.
bool SameBits(const Tensor& a, const Tensor& b) {
  const Tensor ha = testing::ToHost(a.view()), hb = testing::ToHost(b.view());
  return ha.numel() == hb.numel() &&
         std::memcmp(ha.data<float>(), hb.data<float>(), sizeof(float) * ha.numel()) == 0;
}

// One token's Sinkhorn backward runs on a team of 16 lanes, two tokens a warp: 37 tokens leave a
// half-filled last warp; n = 2 and 3 leave lanes of each team idle; iters = 1 has no forward
// normalisation to keep.
class CudaMhcCoefficientsTest : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(CudaMhcCoefficientsTest, SinkhornAndHcHeadMatchTheCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const auto [n, iters] = GetParam();
  const int64_t tokens = 37, width = (2 + n) * n;
  const std::string shape = absl::StrFormat(" n=%d iters=%d", n, iters);
  const float eps = 1e-6f;
  const Tensor mixes = RandomNormal({tokens, width}, 1);
  const Tensor base = RandomNormal({width}, 2, 0.5f);
  const Tensor scale = RandomNormal({3}, 3, 0.5f);
  const Tensor dpre = RandomNormal({tokens, n}, 4), dpost = RandomNormal({tokens, n}, 5);
  const Tensor dcomb = RandomNormal({tokens, n, n}, 6);
  Grad dmixes({tokens, width}, 7), dbase({width}, 8), dscale({3}, 9);
  cpu::MhcCoefficientsBackwardRef<float>(mixes.data<float>(), base.data<float>(),
                                         scale.data<float>(), tokens, n, iters, eps,
                                         dpre.data<float>(), dpost.data<float>(),
                                         dcomb.data<float>(), dmixes.cpu(), dbase.cpu(),
                                         dscale.cpu(), nullptr);
  auto dev = [](const Tensor& t) { return testing::ToDevice(t, DType::kF32); };
  const Tensor m_d = dev(mixes), b_d = dev(base), s_d = dev(scale), dpre_d = dev(dpre),
               dpost_d = dev(dpost), dcomb_d = dev(dcomb);
  const absl::Status status =
      MhcCoefficientsBackward(m_d.view(), b_d.view(), s_d.view(), iters, eps, dpre_d.view(),
                              dpost_d.view(), dcomb_d.view(), dmixes.device.view(),
                              dbase.device.view(), dscale.device.view());
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(dmixes.Check("mhc coefficients dmixes" + shape, kTol));
  EXPECT_TRUE(dbase.Check("mhc coefficients dbase" + shape, kTol));
  EXPECT_TRUE(dscale.Check("mhc coefficients dscale" + shape, {.atol = 1e-4, .rtol = 1e-4}));

  // hc_head: n mixes, one scale.
  const Tensor head_mixes = RandomNormal({tokens, n}, 10);
  const Tensor head_base = RandomNormal({n}, 11), head_scale = RandomNormal({1}, 12);
  Grad hdm({tokens, n}, 13), hdb({n}, 14), hds({1}, 15);
  cpu::HcHeadPreBackwardRef<float>(head_mixes.data<float>(), head_base.data<float>(),
                                   head_scale.data<float>(), tokens, n, dpre.data<float>(),
                                   hdm.cpu(), hdb.cpu(), hds.cpu());
  const Tensor hm_d = dev(head_mixes), hb_d = dev(head_base), hs_d = dev(head_scale);
  ASSERT_TRUE(HcHeadPreBackward(hm_d.view(), hb_d.view(), hs_d.view(), dpre_d.view(),
                                hdm.device.view(), hdb.device.view(), hds.device.view())
                  .ok());
  EXPECT_TRUE(hdm.Check("hc_head dmixes" + shape, kTol));
  EXPECT_TRUE(hdb.Check("hc_head dbase" + shape, kTol));
  EXPECT_TRUE(hds.Check("hc_head dscale" + shape, kTol));
}

INSTANTIATE_TEST_SUITE_P(StreamsAndIterations, CudaMhcCoefficientsTest,
                         ::testing::Values(std::pair<int64_t, int64_t>{4, 20},
                                           std::pair<int64_t, int64_t>{3, 7},
                                           std::pair<int64_t, int64_t>{2, 1},
                                           std::pair<int64_t, int64_t>{1, 3}));

TEST(CudaMhcBackward, CollapseAndExpandBf16Streams) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t tokens = 13;
  // H = 1031 takes the one-channel path; H = 1024 and 520 (multiples of 8) the eight-channel one.
  const struct { int64_t n, hidden; } shapes[] = {{4, 1031}, {2, 1024}, {3, 520}, {4, 1024}};
  for (const auto& [n, hidden] : shapes) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Tensor streams = testing::RoundToBf16(RandomNormal({tokens, n, hidden}, 20));
      const Tensor y = testing::RoundToBf16(RandomNormal({tokens, hidden}, 21));
      const Tensor dout_collapse = testing::RoundToBf16(RandomNormal({tokens, hidden}, 22));
      const Tensor dout_expand = testing::RoundToBf16(RandomNormal({tokens, n, hidden}, 23));
      const Tensor pre = RandomNormal({tokens, n}, 24), post = RandomNormal({tokens, n}, 25);
      const Tensor comb = RandomUniform({tokens, n, n}, 26, 0.0f, 1.0f);
      const std::string kind =
          absl::StrFormat(" %s n=%d H=%d", dtype == DType::kF32 ? "f32" : "bf16", n, hidden);
      {
        Grad dstreams({tokens, n, hidden}, 27), dpre({tokens, n}, 28);
        cpu::MhcCollapseBackwardRef<float>(streams.data<float>(), pre.data<float>(),
                                           dout_collapse.data<float>(), tokens, n, hidden,
                                           dstreams.cpu(), dpre.cpu(), nullptr);
        const Tensor s_d = testing::ToDevice(streams, dtype),
                     g_d = testing::ToDevice(dout_collapse, dtype),
                     p_d = testing::ToDevice(pre, DType::kF32);
        ASSERT_TRUE(MhcCollapseBackward(s_d.view(), p_d.view(), g_d.view(), dstreams.device.view(),
                                        dpre.device.view())
                        .ok());
        EXPECT_TRUE(dstreams.Check("collapse dstreams" + kind, kTol));
        EXPECT_TRUE(dpre.Check("collapse dpre" + kind, {.atol = 1e-4, .rtol = 1e-4}));
      }
      {
        Grad dstreams({tokens, n, hidden}, 29), dy({tokens, hidden}, 30), dpost({tokens, n}, 31),
            dcomb({tokens, n, n}, 32);
        cpu::MhcExpandBackwardRef<float>(streams.data<float>(), y.data<float>(), post.data<float>(),
                                         comb.data<float>(), dout_expand.data<float>(), tokens, n,
                                         hidden, dstreams.cpu(), dy.cpu(), dpost.cpu(), dcomb.cpu(),
                                         nullptr);
        const Tensor s_d = testing::ToDevice(streams, dtype), y_d = testing::ToDevice(y, dtype),
                     g_d = testing::ToDevice(dout_expand, dtype),
                     p_d = testing::ToDevice(post, DType::kF32),
                     c_d = testing::ToDevice(comb, DType::kF32);
        ASSERT_TRUE(MhcExpandBackward(s_d.view(), y_d.view(), p_d.view(), c_d.view(), g_d.view(),
                                      dstreams.device.view(), dy.device.view(), dpost.device.view(),
                                      dcomb.device.view())
                        .ok());
        EXPECT_TRUE(dstreams.Check("expand dstreams" + kind, kTol));
        EXPECT_TRUE(dy.Check("expand dy" + kind, kTol));
        EXPECT_TRUE(dpost.Check("expand dpost" + kind, {.atol = 1e-4, .rtol = 1e-4}));
        EXPECT_TRUE(dcomb.Check("expand dcomb" + kind, {.atol = 1e-4, .rtol = 1e-4}));
      }
    }
  }
}

// DxWrite::kOverwrite: the collapse's dstreams and the expand's dstreams and dy come out bit for
// bit as added to zero-filled buffers although they start as NaN (never read); the coefficient
// gradients are still added to.
TEST(CudaMhcBackward, OverwriteEqualsAddingToZeros) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t tokens = 11;
  for (const auto& [n, hidden] : {std::pair<int64_t, int64_t>{4, 1024}, {3, 1031}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const std::string kind =
          absl::StrFormat(" %s n=%d H=%d", dtype == DType::kF32 ? "f32" : "bf16", n, hidden);
      const Tensor streams = testing::ToDevice(RandomNormal({tokens, n, hidden}, 40), dtype);
      const Tensor y = testing::ToDevice(RandomNormal({tokens, hidden}, 41), dtype);
      const Tensor dout_collapse = testing::ToDevice(RandomNormal({tokens, hidden}, 42), dtype);
      const Tensor dout_expand = testing::ToDevice(RandomNormal({tokens, n, hidden}, 43), dtype);
      const Tensor pre = testing::ToDevice(RandomNormal({tokens, n}, 44), DType::kF32);
      const Tensor post = testing::ToDevice(RandomNormal({tokens, n}, 45), DType::kF32);
      const Tensor comb =
          testing::ToDevice(RandomUniform({tokens, n, n}, 46, 0.0f, 1.0f), DType::kF32);
      const float nan = std::numeric_limits<float>::quiet_NaN();
      {
        const Tensor added = DeviceFilled({tokens, n, hidden}, 0.0f), dpre_a = DeviceFilled({tokens, n}, 0.0f);
        const Tensor written = DeviceFilled({tokens, n, hidden}, nan), dpre_w = DeviceFilled({tokens, n}, 0.0f);
        ASSERT_TRUE(MhcCollapseBackward(streams.view(), pre.view(), dout_collapse.view(),
                                        added.view(), dpre_a.view())
                        .ok());
        ASSERT_TRUE(MhcCollapseBackward(streams.view(), pre.view(), dout_collapse.view(),
                                        written.view(), dpre_w.view(), DxWrite::kOverwrite)
                        .ok());
        EXPECT_TRUE(SameBits(added, written)) << "collapse dstreams" << kind;
        EXPECT_TRUE(SameBits(dpre_a, dpre_w)) << "collapse dpre" << kind;
      }
      const Tensor ds_a = DeviceFilled({tokens, n, hidden}, 0.0f), dy_a = DeviceFilled({tokens, hidden}, 0.0f);
      const Tensor ds_w = DeviceFilled({tokens, n, hidden}, nan), dy_w = DeviceFilled({tokens, hidden}, nan);
      const Tensor dpost_a = DeviceFilled({tokens, n}, 0.0f), dcomb_a = DeviceFilled({tokens, n, n}, 0.0f);
      const Tensor dpost_w = DeviceFilled({tokens, n}, 0.0f), dcomb_w = DeviceFilled({tokens, n, n}, 0.0f);
      ASSERT_TRUE(MhcExpandBackward(streams.view(), y.view(), post.view(), comb.view(),
                                    dout_expand.view(), ds_a.view(), dy_a.view(), dpost_a.view(),
                                    dcomb_a.view())
                      .ok());
      ASSERT_TRUE(MhcExpandBackward(streams.view(), y.view(), post.view(), comb.view(),
                                    dout_expand.view(), ds_w.view(), dy_w.view(), dpost_w.view(),
                                    dcomb_w.view(), DxWrite::kOverwrite)
                      .ok());
      EXPECT_TRUE(SameBits(ds_a, ds_w)) << "expand dstreams" << kind;
      EXPECT_TRUE(SameBits(dy_a, dy_w)) << "expand dy" << kind;
      EXPECT_TRUE(SameBits(dpost_a, dpost_w)) << "expand dpost" << kind;
      EXPECT_TRUE(SameBits(dcomb_a, dcomb_w)) << "expand dcomb" << kind;
      // Overwritten dy may be bf16: the f32 gradient rounded once, the rest unchanged.
      const Tensor ds_b = DeviceFilled({tokens, n, hidden}, nan);
      const Tensor dy_b = Tensor::Empty(DType::kBF16, {tokens, hidden}, DeviceAllocator());
      const Tensor dpost_b = DeviceFilled({tokens, n}, 0.0f), dcomb_b = DeviceFilled({tokens, n, n}, 0.0f);
      ASSERT_TRUE(MhcExpandBackward(streams.view(), y.view(), post.view(), comb.view(),
                                    dout_expand.view(), ds_b.view(), dy_b.view(), dpost_b.view(),
                                    dcomb_b.view(), DxWrite::kOverwrite)
                      .ok());
      const std::vector<float> dy_bf16 = testing::ToHost(dy_b.view()).ToFloatVector();
      const std::vector<float> dy_rounded =
          testing::RoundToBf16(testing::ToHost(dy_a.view())).ToFloatVector();
      ASSERT_EQ(dy_bf16.size(), dy_rounded.size());
      EXPECT_EQ(std::memcmp(dy_bf16.data(), dy_rounded.data(), sizeof(float) * dy_bf16.size()), 0)
          << "expand bf16 dy" << kind;
      EXPECT_TRUE(SameBits(ds_a, ds_b)) << "expand dstreams beside a bf16 dy" << kind;
      EXPECT_TRUE(SameBits(dpost_a, dpost_b)) << "expand dpost beside a bf16 dy" << kind;
      EXPECT_TRUE(SameBits(dcomb_a, dcomb_b)) << "expand dcomb beside a bf16 dy" << kind;
      // Added to, dy must be f32.
      EXPECT_FALSE(MhcExpandBackward(streams.view(), y.view(), post.view(), comb.view(),
                                     dout_expand.view(), ds_b.view(), dy_b.view(), dpost_b.view(),
                                     dcomb_b.view(), DxWrite::kAdd)
                       .ok());
    }
  }
}

TEST(CudaCompressorBackward, OverlappingAndPlainWindows) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  struct Case {
    const char* name;
    int64_t windows, ratio, head_dim, extra_rows, first_entry;
    bool overlap;
    DType dtype;
  };
  // The last two split each channel's slots over threads: 32 slots over two, 128 over eight.
  for (const Case& c : {Case{"csa overlap f32", 7, 4, 37, 3, 0, true, DType::kF32},
                        Case{"hca plain bf16", 5, 8, 45, 5, 2, false, DType::kBF16},
                        Case{"overlap ratio 16 f32", 4, 16, 77, 9, 0, true, DType::kF32},
                        Case{"plain ratio 128 bf16", 3, 128, 45, 17, 1, false, DType::kBF16}}) {
    const int64_t width = (c.overlap ? 2 : 1) * c.head_dim;
    const int64_t rows = c.windows * c.ratio + c.extra_rows;  // a trailing incomplete window
    const Tensor kv = testing::RoundToBf16(RandomNormal({rows, width}, 40));
    const Tensor score = testing::RoundToBf16(RandomNormal({rows, width}, 41, 2.0f));
    const Tensor dout = testing::RoundToBf16(RandomNormal({c.windows - c.first_entry, c.head_dim}, 42));
    Grad dkv({rows, width}, 43), dscore({rows, width}, 44);
    cpu::CompressPoolBackwardRef<float>(kv.data<float>(), score.data<float>(), c.windows, c.ratio,
                                        c.head_dim, c.overlap, c.first_entry, dout.data<float>(),
                                        dkv.cpu(), dscore.cpu(), nullptr);
    const Tensor kv_d = testing::ToDevice(kv, c.dtype), s_d = testing::ToDevice(score, c.dtype),
                 g_d = testing::ToDevice(dout, c.dtype);
    const absl::Status status =
        CompressPoolBackward(kv_d.view(), s_d.view(), c.windows, c.ratio, c.overlap,
                             c.first_entry, g_d.view(), dkv.device.view(), dscore.device.view());
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_TRUE(dkv.Check(std::string("compress pool dkv ") + c.name, kTol));
    EXPECT_TRUE(dscore.Check(std::string("compress pool dscore ") + c.name, kTol));
  }
}

// Shapes and dtypes that do not fit are InvalidArgument naming the op, before any launch: the
// gradients keep their values.
TEST(CudaCompressorBackward, RejectsMismatchedViewsAndLeavesGradients) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t windows = 3, ratio = 128, head_dim = 45, rows = windows * ratio;
  const Tensor kv = DeviceFilled({rows, head_dim}, 0.5f),
               score = DeviceFilled({rows, head_dim}, 1.0f);
  const Tensor dout = DeviceFilled({windows, head_dim}, 1.0f);
  const Tensor dkv = DeviceFilled({rows, head_dim}, 7.0f),
               dscore = DeviceFilled({rows, head_dim}, 7.0f);
  const Tensor wrong_dout = DeviceFilled({windows, head_dim + 1}, 1.0f);
  const Tensor short_kv = DeviceFilled({rows - 1, head_dim}, 0.5f);
  const Tensor bf16_dkv =
      testing::ToDevice(Tensor::Zeros(DType::kF32, {rows, head_dim}), DType::kBF16);
  const Tensor before = DeviceFilled({rows, head_dim}, 7.0f);
  const absl::Status statuses[] = {
      CompressPoolBackward(kv.view(), score.view(), windows, ratio, false, 0, wrong_dout.view(),
                           dkv.view(), dscore.view()),
      CompressPoolBackward(short_kv.view(), score.view(), windows, ratio, false, 0, dout.view(),
                           dkv.view(), dscore.view()),
      CompressPoolBackward(kv.view(), score.view(), windows, ratio, false, 0, dout.view(),
                           bf16_dkv.view(), dscore.view()),
      CompressPoolBackward(kv.view(), score.view(), windows, ratio, false, windows + 1, dout.view(),
                           dkv.view(), dscore.view())};
  for (const absl::Status& status : statuses) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find("CompressPoolBackward"), std::string::npos) << status;
  }
  EXPECT_TRUE(SameBits(dkv, before));
  EXPECT_TRUE(SameBits(dscore, before));
}

TEST(CudaExpertBackward, CombineAndGatherWithDroppedPicks) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t tokens = 11, k = 3, hidden = 517;
  // Plan rows: a permutation of the kept picks; every 5th pick dropped (-1).
  std::vector<int32_t> pick(tokens * k);
  int64_t rows = 0;
  for (int64_t i = 0; i < tokens * k; ++i) pick[i] = i % 5 == 4 ? -1 : static_cast<int32_t>(rows++);
  for (int64_t i = 0; i < tokens * k; ++i) {  // shuffle the plan order deterministically
    const int64_t j = (i * 7 + 3) % (tokens * k);
    std::swap(pick[i], pick[j]);
  }
  Tensor pick_host = Tensor::Empty(DType::kI32, {tokens * k});
  for (int64_t i = 0; i < tokens * k; ++i) pick_host.data<int32_t>()[i] = pick[i];
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor expert_out = testing::RoundToBf16(RandomNormal({rows, hidden}, 50));
    const Tensor dout = testing::RoundToBf16(RandomNormal({tokens, hidden}, 51));
    const Tensor weight = RandomUniform({tokens, k}, 52, 0.0f, 1.0f);
    Grad dexpert({rows, hidden}, 53), dweight({tokens, k}, 54), dx({tokens, hidden}, 55);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        const int32_t p = pick[t * k + j];
        if (p < 0) continue;
        double dot = 0;
        for (int64_t h = 0; h < hidden; ++h) {
          const float g = dout.data<float>()[t * hidden + h];
          dexpert.cpu()[p * hidden + h] += weight.data<float>()[t * k + j] * g;
          dot += double(g) * expert_out.data<float>()[p * hidden + h];
          // Gather backward with dgathered = expert_out as the incoming gradient.
          dx.cpu()[t * hidden + h] += expert_out.data<float>()[p * hidden + h];
        }
        dweight.cpu()[t * k + j] += static_cast<float>(dot);
      }
    }
    const Tensor eo_d = testing::ToDevice(expert_out, dtype), g_d = testing::ToDevice(dout, dtype),
                 w_d = testing::ToDevice(weight, DType::kF32),
                 p_d = testing::ToDevice(pick_host, DType::kI32);
    ASSERT_TRUE(MoeCombineBackward(eo_d.view(), p_d.view(), w_d.view(), g_d.view(),
                                   dexpert.device.view(), dweight.device.view())
                    .ok());
    ASSERT_TRUE(MoeGatherBackward(eo_d.view(), p_d.view(), k, dx.device.view()).ok());
    const std::string kind = dtype == DType::kF32 ? " f32" : " bf16";
    EXPECT_TRUE(dexpert.Check("moe combine dexpert_out" + kind, kTol));
    EXPECT_TRUE(dweight.Check("moe combine dweight" + kind, {.atol = 1e-4, .rtol = 1e-4}));
    EXPECT_TRUE(dx.Check("moe gather dx" + kind, kTol));
  }
}

}  // namespace
}  // namespace v4rl::kernels::cuda
