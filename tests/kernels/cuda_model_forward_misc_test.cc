// gpu tests of kernels/cuda/model_forward_misc.h against the CPU references they mirror
// (kernels/cpu/mhc.h MhcCoefficientsRef, HcHeadPreRef, MhcCollapseRef; the scoring loop of
// kernels/cpu/indexer.h IndexerTopKRef, written out here on given dot products). Odd sizes
// (37 tokens, n = 3 and 4, H = 70; the collapse also at H = 64 and on bf16 streams). f32 math;
// tolerance atol 1e-6 + rtol 1e-5 per element (same
// operation order, only the device's expf and FMA contraction differ). Skips without a device.
#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cpu/mhc.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/model_forward_misc.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;
using testing::RandomUniform;

constexpr testing::Tolerance kF32{.atol = 1e-6, .rtol = 1e-5};

Tensor Dev(const Tensor& host) { return testing::ToDevice(host, host.dtype()); }
Tensor DevEmpty(absl::Span<const int64_t> shape) {
  return Tensor::Empty(DType::kF32, shape, DeviceAllocator());
}

TEST(CudaModelForwardMisc, MhcCoefficientsMatchTheCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (const int64_t n : {3, 4}) {
    const int64_t tokens = 37, width = (2 + n) * n, iters = 20;
    const float eps = 1e-6f;
    const Tensor mixes = RandomNormal({tokens, width}, 1 + n, 2.0f);
    const Tensor base = RandomNormal({width}, 2 + n);
    const Tensor scale = RandomUniform({3}, 3 + n, 0.5f, 1.5f);
    Tensor want_pre = Tensor::Empty(DType::kF32, {tokens, n});
    Tensor want_post = Tensor::Empty(DType::kF32, {tokens, n});
    Tensor want_comb = Tensor::Empty(DType::kF32, {tokens, n, n});
    cpu::MhcCoefficientsRef<float>(mixes.data<float>(), base.data<float>(), scale.data<float>(),
                                   tokens, n, iters, eps, want_pre.data<float>(),
                                   want_post.data<float>(), want_comb.data<float>(), nullptr);
    const Tensor pre = DevEmpty({tokens, n}), post = DevEmpty({tokens, n});
    const Tensor comb = DevEmpty({tokens, n, n});
    ASSERT_TRUE(MhcCoefficients(Dev(mixes).view(), Dev(base).view(), Dev(scale).view(), iters, eps,
                                pre.view(), post.view(), comb.view())
                    .ok());
    EXPECT_TRUE(
        testing::CloseAndReport("pre", testing::ToHost(pre.view()).view(), want_pre.view(), kF32));
    EXPECT_TRUE(testing::CloseAndReport("post", testing::ToHost(post.view()).view(),
                                        want_post.view(), kF32));
    EXPECT_TRUE(testing::CloseAndReport("comb", testing::ToHost(comb.view()).view(),
                                        want_comb.view(), kF32));
  }
  // Shapes that do not fit are InvalidArgument.
  const Tensor pre = DevEmpty({5, 5});
  EXPECT_FALSE(MhcCoefficients(DevEmpty({5, 35}).view(), DevEmpty({35}).view(),
                               DevEmpty({3}).view(), 20, 1e-6f, pre.view(), pre.view(),
                               DevEmpty({5, 5, 5}).view())
                   .ok());
}

TEST(CudaModelForwardMisc, HcHeadAndCollapseMatchTheCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t tokens = 37, n = 4, hidden = 70;
  const Tensor mixes = RandomNormal({tokens, n}, 1, 2.0f);
  const Tensor base = RandomNormal({n}, 2);
  const Tensor scale = RandomUniform({1}, 3, 0.5f, 1.5f);
  Tensor want_pre = Tensor::Empty(DType::kF32, {tokens, n});
  cpu::HcHeadPreRef<float>(mixes.data<float>(), base.data<float>(), scale.data<float>(), tokens, n,
                           1e-6f, want_pre.data<float>());
  const Tensor pre = DevEmpty({tokens, n});
  ASSERT_TRUE(
      HcHeadCoefficients(Dev(mixes).view(), Dev(base).view(), Dev(scale).view(), 1e-6f, pre.view())
          .ok());
  EXPECT_TRUE(testing::CloseAndReport("hc_head pre", testing::ToHost(pre.view()).view(),
                                      want_pre.view(), kF32));

  // H = 70 takes the one-channel path, H = 64 the eight-channel one; f32 and bf16 streams (the
  // bf16 residual streams of bf16 GEMM math: the reference reads the same rounded values).
  for (const int64_t width : {hidden, int64_t{64}}) {
    for (const DType dtype : {DType::kF32, DType::kBF16}) {
      const Tensor streams = testing::RoundToBf16(RandomNormal({tokens, n, width}, 4));
      Tensor want = Tensor::Empty(DType::kF32, {tokens, width});
      cpu::MhcCollapseRef<float>(streams.data<float>(), want_pre.data<float>(), tokens, n, width,
                                 want.data<float>(), nullptr);
      const Tensor out = DevEmpty({tokens, width});
      ASSERT_TRUE(
          MhcCollapse(testing::ToDevice(streams, dtype).view(), Dev(want_pre).view(), out.view())
              .ok());
      EXPECT_TRUE(testing::CloseAndReport(
          absl::StrFormat("collapse H=%d %s", width, dtype == DType::kBF16 ? "bf16" : "f32"),
          testing::ToHost(out.view()).view(), want.view(), kF32));
    }
  }
  // Streams of another dtype are InvalidArgument.
  const Tensor i32 =
      testing::ToDevice(Tensor::Zeros(DType::kI32, {tokens, n, hidden}), DType::kI32);
  EXPECT_EQ(MhcCollapse(i32.view(), Dev(want_pre).view(), DevEmpty({tokens, hidden}).view()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaModelForwardMisc, IndexerHeadScoresMatchTheCpuLoop) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t num_q = 19, heads = 5, num_keys = 23;
  const float score_scale = 0.125f;
  const Tensor dots = RandomNormal({num_q * heads, num_keys}, 1);  // negatives exercise the ReLU
  const Tensor weights = RandomNormal({num_q, heads}, 2);
  Tensor want = Tensor::Empty(DType::kF32, {num_q, num_keys});
  for (int64_t i = 0; i < num_q; ++i) {
    for (int64_t s = 0; s < num_keys; ++s) {
      float total = 0.0f;
      for (int64_t h = 0; h < heads; ++h) {
        total += std::max(dots.data<float>()[(i * heads + h) * num_keys + s], 0.0f) * score_scale *
                 weights.data<float>()[i * heads + h];
      }
      want.data<float>()[i * num_keys + s] = total;
    }
  }
  const Tensor scores = DevEmpty({num_q, num_keys});
  ASSERT_TRUE(
      IndexerHeadScores(Dev(dots).view(), Dev(weights).view(), score_scale, scores.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport("indexer scores", testing::ToHost(scores.view()).view(),
                                      want.view(), kF32));
}

}  // namespace
}  // namespace v4rl::kernels::cuda
