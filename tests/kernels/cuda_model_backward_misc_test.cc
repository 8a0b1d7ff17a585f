// gpu tests of kernels/cuda/model_backward_misc.h against the CPU loops they mirror (the router's
// kernels/cpu/routing.h and elementwise_backward.h references; model/moe_backward.cc's routing
// weight step, model/compressor_backward.cc's ape sum and model/backward.cc's embedding scatter
// written out here). All f32; tolerance atol 1e-5 + rtol 1e-4 per element (kF32), sums of at most
// a few hundred terms in a different order. Skips without a device.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/elementwise_backward.h"
#include "kernels/cpu/routing.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/model_backward_misc.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;
using testing::RandomUniform;

constexpr testing::Tolerance kF32{.atol = 1e-5, .rtol = 1e-4};

Tensor I32Host(const std::vector<int32_t>& values) {
  Tensor host = Tensor::Empty(DType::kI32, {static_cast<int64_t>(values.size())});
  for (size_t i = 0; i < values.size(); ++i) host.data<int32_t>()[i] = values[i];
  return host;
}
Tensor Dev(const Tensor& host) { return testing::ToDevice(host, host.dtype()); }

TEST(CudaModelBackwardMisc, RoutingWeightsAndSqrtSoftplusMatchTheCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t tokens = 37, experts = 11, k = 3;
  const Tensor scores = RandomUniform({tokens, experts}, 1, 0.05f, 2.0f);
  std::vector<int32_t> idx(tokens * k);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) idx[t * k + j] = static_cast<int32_t>((t * 5 + j * 4) % experts);
  }
  const Tensor topk = Tensor::CopyOf(I32Host(idx).view().Reshape({tokens, k}));
  const Tensor dweights = RandomNormal({tokens, k}, 2);
  Tensor want = RandomNormal({tokens, experts}, 3);
  const Tensor got = Dev(want);
  cpu::RoutingWeightsBackwardRef<float>(scores.data<float>(), topk.data<int32_t>(), tokens,
                                        experts, k, 2.5f, 1e-20f, dweights.data<float>(),
                                        want.data<float>());
  ASSERT_TRUE(RoutingWeightsBackward(Dev(scores).view(), Dev(topk).view(), 2.5f, 1e-20f,
                                     Dev(dweights).view(), got.view())
                  .ok());
  EXPECT_TRUE(testing::CloseAndReport("routing dscores", testing::ToHost(got.view()).view(),
                                      want.view(), kF32));

  // sqrt(softplus): negative, moderate and linear-region (> 20) inputs.
  Tensor x = RandomNormal({tokens, experts}, 4, 4.0f);
  x.data<float>()[0] = 25.0f;
  x.data<float>()[1] = -12.0f;
  const Tensor dy = RandomNormal({tokens, experts}, 5);
  Tensor want_dx = RandomNormal({tokens, experts}, 6);
  const Tensor dx = Dev(want_dx);
  cpu::SqrtSoftplusBackwardRef<float>(x.data<float>(), dy.data<float>(), want_dx.data<float>(),
                                      x.numel());
  ASSERT_TRUE(SqrtSoftplusBackward(Dev(x).view(), Dev(dy).view(), dx.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport("sqrt softplus dx", testing::ToHost(dx.view()).view(),
                                      want_dx.view(), kF32));
}

TEST(CudaModelBackwardMisc, ExpertWeightMatchesTheMoeBackwardLoop) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t tokens = 13, k = 2, inter = 300;
  // Plan order: slots permuted, one slot dropped (no pick), its row last as the device plan
  // leaves it (slot -1: left as it is).
  std::vector<int32_t> slots;
  for (int64_t s = tokens * k - 1; s >= 0; s -= 1) {
    if (s != 7) slots.push_back(static_cast<int32_t>((s * 7) % (tokens * k)));
  }
  slots.push_back(-1);
  const int64_t picks = static_cast<int64_t>(slots.size());
  const Tensor act = RandomNormal({picks, inter}, 1);
  const Tensor weight = RandomUniform({tokens, k}, 2, 0.1f, 1.0f);
  Tensor want_u = RandomNormal({picks, inter}, 3);
  Tensor want_dw = RandomNormal({tokens, k}, 4);
  const Tensor u = Dev(want_u), dw = Dev(want_dw);
  const Tensor weighted = Dev(Tensor::Zeros(DType::kF32, {picks, inter}));
  Tensor want_weighted = Tensor::Zeros(DType::kF32, {picks, inter});
  for (int64_t p = 0; p < picks; ++p) {
    const int64_t slot = slots[p];
    if (slot < 0) continue;
    const float w = weight.data<float>()[slot];
    float dot = 0;
    for (int64_t i = 0; i < inter; ++i) {
      dot += want_u.data<float>()[p * inter + i] * act.data<float>()[p * inter + i];
      want_u.data<float>()[p * inter + i] *= w;
      want_weighted.data<float>()[p * inter + i] = w * act.data<float>()[p * inter + i];
    }
    want_dw.data<float>()[slot] += dot;
  }
  ASSERT_TRUE(ExpertWeightBackward(Dev(act).view(), Dev(I32Host(slots)).view(),
                                   Dev(weight).view(), u.view(), weighted.view(), dw.view())
                  .ok());
  EXPECT_TRUE(testing::CloseAndReport("u", testing::ToHost(u.view()).view(), want_u.view(), kF32));
  EXPECT_TRUE(testing::CloseAndReport("weighted act", testing::ToHost(weighted.view()).view(),
                                      want_weighted.view(), kF32));
  EXPECT_TRUE(
      testing::CloseAndReport("dweight", testing::ToHost(dw.view()).view(), want_dw.view(), kF32));

  // A bf16 weighted activation (a bf16 product's operand): w·act rounded once, bit for bit.
  const Tensor u_again = Dev(want_u), dw_again = Dev(want_dw);
  const Tensor weighted_bf16 =
      testing::ToDevice(Tensor::Zeros(DType::kF32, {picks, inter}), DType::kBF16);
  ASSERT_TRUE(ExpertWeightBackward(Dev(act).view(), Dev(I32Host(slots)).view(), Dev(weight).view(),
                                   u_again.view(), weighted_bf16.view(), dw_again.view())
                  .ok());
  const std::vector<float> got_bf16 = testing::ToHost(weighted_bf16.view()).ToFloatVector();
  const std::vector<float> want_bf16 = testing::RoundToBf16(want_weighted).ToFloatVector();
  ASSERT_EQ(got_bf16.size(), want_bf16.size());
  for (size_t i = 0; i < got_bf16.size(); ++i) ASSERT_EQ(got_bf16[i], want_bf16[i]) << i;
}

TEST(CudaModelBackwardMisc, ApeEmbeddingAndFillZeroMatchTheCpuLoops) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // ape: B = 2 sequences of T = 41 rows, ratio 4, width 2·8.
  const int64_t batch = 2, seq_len = 41, ratio = 4, width = 16;
  const Tensor dscore = RandomNormal({batch * seq_len, width}, 1);
  Tensor want_ape = RandomNormal({ratio, width}, 2);
  const Tensor ape = Dev(want_ape);
  for (int64_t row = 0; row < batch * seq_len; ++row) {
    for (int64_t c = 0; c < width; ++c) {
      want_ape.data<float>()[((row % seq_len) % ratio) * width + c] +=
          dscore.data<float>()[row * width + c];
    }
  }
  ASSERT_TRUE(ApeBackward(Dev(dscore).view(), seq_len, ratio, ape.view()).ok());
  EXPECT_TRUE(
      testing::CloseAndReport("dape", testing::ToHost(ape.view()).view(), want_ape.view(), kF32));

  // Embedding: 29 tokens over a vocabulary of 7 (ids repeat), n = 3 streams, H = 70.
  const int64_t tokens = 29, vocab = 7, n = 3, hidden = 70;
  std::vector<int32_t> ids(tokens);
  for (int64_t t = 0; t < tokens; ++t) ids[t] = static_cast<int32_t>((t * 3) % (vocab - 1));
  const Tensor dstreams = RandomNormal({tokens, n, hidden}, 3);
  Tensor want_embed = RandomNormal({vocab, hidden}, 4);
  const Tensor dembed = Dev(want_embed);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t h = 0; h < hidden; ++h) {
        want_embed.data<float>()[ids[t] * hidden + h] +=
            dstreams.data<float>()[(t * n + j) * hidden + h];
      }
    }
  }
  ASSERT_TRUE(EmbeddingBackward(Dev(dstreams).view(), Dev(I32Host(ids)).view(), dembed.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport("dembed", testing::ToHost(dembed.view()).view(),
                                      want_embed.view(), kF32));

  const Tensor zeroed = Dev(RandomNormal({5, 77}, 5));
  ASSERT_TRUE(FillZero(zeroed.view()).ok());
  for (float v : testing::ToHost(zeroed.view()).ToFloatVector()) ASSERT_EQ(v, 0.0f);
  const Tensor zeroed_bf16 = testing::ToDevice(RandomNormal({3, 129}, 6), DType::kBF16);
  ASSERT_TRUE(FillZero(zeroed_bf16.view()).ok());
  for (float v : testing::ToHost(zeroed_bf16.view()).ToFloatVector()) ASSERT_EQ(v, 0.0f);
  EXPECT_FALSE(FillZero(Dev(I32Host({1, 2, 3})).view()).ok());  // neither f32 nor bf16

  // Mismatched shapes are rejected.
  EXPECT_FALSE(ApeBackward(Dev(dscore).view(), seq_len, ratio + 1, ape.view()).ok());
  // Rows that are not whole sequences of seq_len.
  EXPECT_FALSE(ApeBackward(Dev(dscore).view(), seq_len + 1, ratio, ape.view()).ok());
}

// AddRowSums (AddColumnSums' second launch) against the plain in-order float loop, bit for bit:
// 5 rows (the unbatched tail only), 32 (one batch of loads), 70 (two batches and a tail of 6);
// 300 columns (a partial second block of 256). The batched loads must keep the adds in row order.
TEST(CudaModelBackwardMisc, AddRowSumsAddsTheRowsInOrder) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t width = 300;
  for (const int64_t rows : {5, 32, 70}) {
    const Tensor partials = RandomNormal({rows, width}, 20 + rows, 3.0f);
    const Tensor start = RandomNormal({width}, 21);
    const Tensor out = Dev(start);
    ASSERT_TRUE(AddRowSums(Dev(partials).view(), out.view()).ok());
    const Tensor got = testing::ToHost(out.view());
    int64_t mismatches = 0;
    for (int64_t c = 0; c < width; ++c) {
      float sum = 0;
      for (int64_t r = 0; r < rows; ++r) sum += partials.data<float>()[r * width + c];
      const float want = start.data<float>()[c] + sum;
      mismatches += got.data<float>()[c] != want ? 1 : 0;
    }
    EXPECT_EQ(mismatches, 0) << rows << " rows";
  }
}

}  // namespace
}  // namespace v4rl::kernels::cuda
