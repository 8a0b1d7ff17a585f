// CUDA backward kernels (linear via cuBLAS, RMSNorm, RoPE, clamped SwiGLU) and the chunked token
// losses against the CPU references of kernels/cpu/*_backward.h and kernels/cpu/token_losses.h, on
// odd sizes, in f32 (the `reference` precision) and with bf16 storage (gpu label; skips without a
// device). The token losses' row-in-registers kernel is also checked against their general one.
// Every comparison prints its measured error next to the stated tolerance.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "kernels/cpu/elementwise_backward.h"
#include "kernels/cpu/linear_backward.h"
#include "kernels/cpu/token_losses.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise_backward.h"
#include "kernels/cuda/head_loss.h"
#include "kernels/cuda/linear_backward.h"
#include "kernels/cuda/token_losses.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;
using testing::RandomUniform;

// f32 everywhere: fp32 sums in another order than the CPU's.
constexpr testing::Tolerance kF32{.atol = 1e-5, .rtol = 1e-4};
// bf16 inputs, f32 outputs: exact bf16 products, fp32 sums (tensor-core order).
constexpr testing::Tolerance kBf16InF32Out{.atol = 1e-4, .rtol = 1e-4};

Tensor I32Device(const std::vector<int32_t>& values) {
  Tensor host = Tensor::Empty(DType::kI32, {static_cast<int64_t>(values.size())});
  for (size_t i = 0; i < values.size(); ++i) host.data<int32_t>()[i] = values[i];
  return testing::ToDevice(host, DType::kI32);
}

std::unique_ptr<BlasHandle> Blas() {
  auto handle = BlasHandle::Create();
  V4RL_CHECK(handle.ok()) << handle.status();
  return std::move(*handle);
}

TEST(CudaBackward, LinearF32AndBf16AccumulateOddSizes) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto blas = Blas();
  const int64_t m = 37, n = 53, k = 71;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor x = testing::RoundToBf16(RandomNormal({m, k}, 1));
    const Tensor w = testing::RoundToBf16(RandomNormal({n, k}, 2));
    const Tensor dy = testing::RoundToBf16(RandomNormal({m, n}, 3));
    Tensor want_dx = RandomNormal({m, k}, 4), want_dw = RandomNormal({n, k}, 5);
    const Tensor dx = testing::ToDevice(want_dx, DType::kF32);
    const Tensor dw = testing::ToDevice(want_dw, DType::kF32);
    cpu::LinearBackwardRef<float>(x.data<float>(), k, w.data<float>(), k, dy.data<float>(), n,
                                  want_dx.data<float>(), k, want_dw.data<float>(), k, m, n, k,
                                  nullptr);
    const Tensor xd = testing::ToDevice(x, dtype), wd = testing::ToDevice(w, dtype),
                 dyd = testing::ToDevice(dy, dtype);
    ASSERT_TRUE(LinearBackward(*blas, xd.view(), wd.view(), dyd.view(), dx.view(), dw.view()).ok());
    const auto tol = dtype == DType::kF32 ? kF32 : kBf16InF32Out;
    const std::string name = dtype == DType::kF32 ? "linear f32" : "linear bf16";
    EXPECT_TRUE(testing::CloseAndReport(name + " dx", testing::ToHost(dx.view()).view(),
                                        want_dx.view(), tol));
    EXPECT_TRUE(testing::CloseAndReport(name + " dw", testing::ToHost(dw.view()).view(),
                                        want_dw.view(), tol));
  }
}

// A small dw summed over many rows (the mHC fn's shape) takes the split-K path: 3 chunks of 512
// rows plus a 1-row tail, partials added in order. On a lane (no split) the same. Sums of 1,537
// products in another order than the CPU's: compared by norm (measured on the H200: 3e-7 for
// f32, 1.6e-6 for bf16 inputs; a lost or doubled chunk would be ~0.3).
TEST(CudaBackward, LinearSmallWeightGradientOverManyRowsSplitsRows) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto blas = Blas();
  const int64_t m = 1537, n = 24, k = 200;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor x = testing::RoundToBf16(RandomNormal({m, k}, 21));
    const Tensor w = testing::RoundToBf16(RandomNormal({n, k}, 22));
    const Tensor dy = testing::RoundToBf16(RandomNormal({m, n}, 23));
    Tensor want_dw = RandomNormal({n, k}, 25);
    const Tensor start_dw = Tensor::CopyOf(want_dw.view());  // want_dw is updated in place below
    cpu::LinearBackwardRef<float>(x.data<float>(), k, w.data<float>(), k, dy.data<float>(), n,
                                  nullptr, k, want_dw.data<float>(), k, m, n, k, nullptr);
    const Tensor xd = testing::ToDevice(x, dtype), wd = testing::ToDevice(w, dtype),
                 dyd = testing::ToDevice(dy, dtype);
    for (BlasHandle* handle : {blas.get(), &blas->Lane(0)}) {
      const Tensor dw = testing::ToDevice(start_dw, DType::kF32);
      ASSERT_TRUE(
          LinearBackward(*handle, xd.view(), wd.view(), dyd.view(), core::TensorView(), dw.view())
              .ok());
      const std::string name = std::string(dtype == DType::kF32 ? "f32" : "bf16") +
                               (handle == blas.get() ? " split rows dw" : " lane dw");
      const Tensor got = testing::ToHost(dw.view());
      std::printf("[measured] linear %s: %s\n", name.c_str(),
                  testing::Describe(testing::Compare(got.view(), want_dw.view())).c_str());
      EXPECT_TRUE(testing::RelErrorByNormAtMost(got.view(), want_dw.view(), 1e-5)) << name;
    }
  }
}

TEST(CudaBackward, LinearWithBf16GemmMathIsWithinBf16RoundingOfF32) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto handle = BlasHandle::Create(GemmMath::kBf16Inputs);
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int64_t m = 37, n = 53, k = 71;
  // f32 inputs off the bf16 grid. cuBLAS's down-conversion (CUBLAS_COMPUTE_32F_FAST_16BF) is its
  // own, so the result is held to the exact f32 one by the size of a bf16 input rounding (2^-8
  // relative, truncating or not): near it, and not equal to it (the math did change).
  const Tensor x = RandomNormal({m, k}, 21), w = RandomNormal({n, k}, 22),
               dy = RandomNormal({m, n}, 23);
  Tensor want_dx = Tensor::Zeros(DType::kF32, {m, k}), want_dw = Tensor::Zeros(DType::kF32, {n, k});
  cpu::LinearBackwardRef<float>(x.data<float>(), k, w.data<float>(), k, dy.data<float>(), n,
                                want_dx.data<float>(), k, want_dw.data<float>(), k, m, n, k,
                                nullptr);
  const Tensor dx = testing::ToDevice(Tensor::Zeros(DType::kF32, {m, k}), DType::kF32);
  const Tensor dw = testing::ToDevice(Tensor::Zeros(DType::kF32, {n, k}), DType::kF32);
  const Tensor xd = testing::ToDevice(x, DType::kF32), wd = testing::ToDevice(w, DType::kF32),
               dyd = testing::ToDevice(dy, DType::kF32);
  ASSERT_TRUE(
      LinearBackward(**handle, xd.view(), wd.view(), dyd.view(), dx.view(), dw.view()).ok());
  const struct {
    const char* name;
    const Tensor& got;
    const Tensor& want;
  } outputs[] = {{"dx", dx, want_dx}, {"dw", dw, want_dw}};
  for (const auto& [name, got, want] : outputs) {
    const testing::CompareStats stats =
        testing::Compare(testing::ToHost(got.view()).view(), want.view());
    std::printf("[measured] linear bf16 math %s vs exact f32: %s (bounds 1e-4 .. 1e-2 by norm)\n",
                name, testing::Describe(stats).c_str());
    EXPECT_LT(stats.rel_error_by_norm, 1e-2) << name;
    EXPECT_GT(stats.rel_error_by_norm, 1e-4) << name << ": bf16 math left the result exact";
  }
}

TEST(CudaBackward, LinearStridedAndGroupedExperts) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto blas = Blas();
  const int64_t p = 41, n = 19, k = 33, experts = 4, wide = 40;
  const std::vector<int64_t> offsets = {0, 13, 13, 30, 41};  // an empty expert
  const Tensor x = RandomNormal({p, wide}, 6);                // x = columns [3, 3 + k)
  const Tensor w = RandomNormal({experts, n, k}, 7);
  const Tensor dy = RandomNormal({p, n}, 8);
  Tensor want_dx = Tensor::Zeros(DType::kF32, {p, k});
  Tensor want_dw = Tensor::Zeros(DType::kF32, {experts, n, k});
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t b = offsets[e], rows = offsets[e + 1] - offsets[e];
    cpu::LinearBackwardRef<float>(x.data<float>() + b * wide + 3, wide,
                                  w.data<float>() + e * n * k, k, dy.data<float>() + b * n, n,
                                  want_dx.data<float>() + b * k, k,
                                  want_dw.data<float>() + e * n * k, k, rows, n, k, nullptr);
  }
  const Tensor xd = testing::ToDevice(x, DType::kF32), wd = testing::ToDevice(w, DType::kF32),
               dyd = testing::ToDevice(dy, DType::kF32);
  const Tensor dx = testing::ToDevice(Tensor::Zeros(DType::kF32, {p, k}), DType::kF32);
  const Tensor dw = testing::ToDevice(Tensor::Zeros(DType::kF32, {experts, n, k}), DType::kF32);
  ASSERT_TRUE(GroupedLinearBackward(*blas, xd.view().Slice(1, 3, 3 + k), wd.view(), dyd.view(),
                                    offsets.data(), dx.view(), dw.view(), /*overwrite_dw=*/false)
                  .ok());
  EXPECT_TRUE(testing::CloseAndReport("grouped linear f32 dx", testing::ToHost(dx.view()).view(),
                                      want_dx.view(), kF32));
  EXPECT_TRUE(testing::CloseAndReport("grouped linear f32 dw", testing::ToHost(dw.view()).view(),
                                      want_dw.view(), kF32));
  // overwrite_dw writes every expert's dw, the empty expert's as zeros, whatever was there.
  const Tensor dw_over = testing::ToDevice(RandomNormal({experts, n, k}, 9), DType::kF32);
  ASSERT_TRUE(GroupedLinearBackward(*blas, xd.view().Slice(1, 3, 3 + k), wd.view(), dyd.view(),
                                    offsets.data(), core::TensorView(), dw_over.view(),
                                    /*overwrite_dw=*/true)
                  .ok());
  EXPECT_TRUE(testing::CloseAndReport("grouped linear f32 dw overwritten",
                                      testing::ToHost(dw_over.view()).view(), want_dw.view(),
                                      kF32));
  // Without dw, x is not read: an empty x gives the same dx.
  const Tensor dx_only = testing::ToDevice(Tensor::Zeros(DType::kF32, {p, k}), DType::kF32);
  ASSERT_TRUE(GroupedLinearBackward(*blas, core::TensorView(), wd.view(), dyd.view(),
                                    offsets.data(), dx_only.view(), core::TensorView(),
                                    /*overwrite_dw=*/false)
                  .ok());
  EXPECT_TRUE(testing::CloseAndReport("grouped linear f32 dx without x",
                                      testing::ToHost(dx_only.view()).view(), want_dx.view(),
                                      kF32));
  // ... but dw needs it.
  EXPECT_FALSE(GroupedLinearBackward(*blas, core::TensorView(), wd.view(), dyd.view(),
                                     offsets.data(), dx.view(), dw.view(), /*overwrite_dw=*/false)
                   .ok());
  // Rows past offsets[E] (a dropped pick's) are neither read nor written: NaN there changes
  // nothing and dx keeps its sentinel.
  const std::vector<int64_t> short_offsets = {0, 13, 13, 30, 38};
  Tensor dy_nan_tail = Tensor::CopyOf(dy.view());
  for (int64_t i = 38 * n; i < p * n; ++i) dy_nan_tail.data<float>()[i] = NAN;
  Tensor dx_sentinel = Tensor::Zeros(DType::kF32, {p, k});
  for (int64_t i = 38 * k; i < p * k; ++i) dx_sentinel.data<float>()[i] = 7.0f;
  const Tensor dx_tail = testing::ToDevice(dx_sentinel, DType::kF32);
  ASSERT_TRUE(GroupedLinearBackward(*blas, core::TensorView(), wd.view(),
                                    testing::ToDevice(dy_nan_tail, DType::kF32).view(),
                                    short_offsets.data(), dx_tail.view(), core::TensorView(),
                                    /*overwrite_dw=*/false)
                  .ok());
  const Tensor dx_tail_host = testing::ToHost(dx_tail.view());
  for (int64_t r = 0; r < p; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const float got = dx_tail_host.data<float>()[r * k + c];
      if (r >= 38) {
        ASSERT_EQ(got, 7.0f) << "row " << r;
      } else {
        const float want = want_dx.data<float>()[r * k + c];
        ASSERT_NEAR(got, want, kF32.atol + kF32.rtol * std::fabs(want)) << "row " << r;
      }
    }
  }
  // ... but offsets past P are rejected.
  const std::vector<int64_t> long_offsets = {0, 13, 13, 30, 42};
  EXPECT_FALSE(GroupedLinearBackward(*blas, core::TensorView(), wd.view(), dyd.view(),
                                     long_offsets.data(), dx.view(), core::TensorView(),
                                     /*overwrite_dw=*/false)
                   .ok());
  // Mismatched shapes are rejected.
  EXPECT_FALSE(LinearBackward(*blas, xd.view().Slice(1, 0, k), wd.view().Select(0, 0),
                              dyd.view().Slice(1, 0, n - 1), dx.view(), core::TensorView())
                   .ok());
}

// dim 1031: the scalar path; multiples of 8: eight columns a thread, the row in registers for
// one step (512), two (2056) and three of four (6152), and the loop past four steps (8200).
TEST(CudaBackward, RmsNormWeightedUnweightedBf16) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 23;
  for (const int64_t dim : {1031, 512, 2056, 6152, 8200}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Tensor x = testing::RoundToBf16(RandomNormal({rows, dim}, 11, 2.0f));
      const Tensor weight = testing::RoundToBf16(RandomNormal({dim}, 12));
      const Tensor dy = testing::RoundToBf16(RandomNormal({rows, dim}, 13));
      for (bool weighted : {true, false}) {
        Tensor want_dx = RandomNormal({rows, dim}, 14), want_dw = RandomNormal({dim}, 15);
        const Tensor dx = testing::ToDevice(want_dx, DType::kF32);
        const Tensor dwd = testing::ToDevice(want_dw, DType::kF32);
        cpu::RmsNormBackwardRef<float>(x.data<float>(), dim,
                                       weighted ? weight.data<float>() : nullptr, 1e-6f,
                                       dy.data<float>(), dim, want_dx.data<float>(), dim,
                                       want_dw.data<float>(), rows, dim, nullptr);
        const Tensor xd = testing::ToDevice(x, dtype), dyd = testing::ToDevice(dy, dtype),
                     wd = testing::ToDevice(weight, dtype);
        ASSERT_TRUE(RmsNormBackward(xd.view(), weighted ? wd.view() : core::TensorView(), 1e-6f,
                                    dyd.view(), dx.view(), dwd.view())
                        .ok());
        const std::string name = "rmsnorm backward D=" + std::to_string(dim) + " " +
                                 (dtype == DType::kF32 ? "f32" : "bf16 in") +
                                 (weighted ? " weighted" : " unweighted");
        EXPECT_TRUE(testing::CloseAndReport(name + " dx", testing::ToHost(dx.view()).view(),
                                            want_dx.view(), kF32));
        EXPECT_TRUE(testing::CloseAndReport(name + " dweight", testing::ToHost(dwd.view()).view(),
                                            want_dw.view(), kF32));
      }
    }
  }
}

// overwrite_dx (GEMM beta 0) against adding to a zeroed dx, f32 and bf16 operands, odd sizes and
// a strided dx column block (as the grouped output projection's): dx starts as NaN, which the
// overwrite must not read; dw is still added to.
TEST(CudaBackward, LinearOverwriteDxEqualsAddToZeros) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto blas = Blas();
  const int64_t m = 37, n = 53, k = 71;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor x = testing::ToDevice(RandomNormal({m, k}, 31), dtype);
    const Tensor w = testing::ToDevice(RandomNormal({n, k}, 32), dtype);
    const Tensor dy = testing::ToDevice(RandomNormal({m, n}, 33), dtype);
    const Tensor add = testing::ToDevice(Tensor::Zeros(DType::kF32, {m, k + 5}), DType::kF32);
    Tensor nan = Tensor::Zeros(DType::kF32, {m, k + 5});
    for (int64_t i = 0; i < m * (k + 5); ++i) {
      if (i % (k + 5) < k) nan.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
    }
    const Tensor over = testing::ToDevice(nan, DType::kF32);
    const Tensor dw_add = testing::ToDevice(RandomNormal({n, k}, 34), DType::kF32);
    const Tensor dw_over = testing::ToDevice(testing::ToHost(dw_add.view()), DType::kF32);
    ASSERT_TRUE(LinearBackward(*blas, x.view(), w.view(), dy.view(), add.view().Slice(1, 0, k),
                               dw_add.view())
                    .ok());
    ASSERT_TRUE(LinearBackward(*blas, x.view(), w.view(), dy.view(), over.view().Slice(1, 0, k),
                               dw_over.view(), /*overwrite_dx=*/true)
                    .ok());
    const std::string name = dtype == DType::kF32 ? "f32" : "bf16";
    EXPECT_TRUE(testing::CloseAndReport("linear overwrite dx " + name,
                                        testing::ToHost(over.view()).view(),
                                        testing::ToHost(add.view()).view(), kF32));
    EXPECT_TRUE(testing::CloseAndReport("linear overwrite dw " + name,
                                        testing::ToHost(dw_over.view()).view(),
                                        testing::ToHost(dw_add.view()).view(), kF32));
  }
}

// DxWrite::kOverwrite against kAdd on a zeroed dx, bit for bit (f32 and bf16 dx, the scalar path
// at D = 1031 and the 8-wide one at 520 and 512): dx starts as NaN, which kOverwrite must not
// read; dweight is unaffected.
TEST(CudaBackward, RmsNormOverwriteEqualsAddToZeros) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 17;
  for (const int64_t dim : {1031, 520, 512}) {
    const Tensor x = testing::ToDevice(RandomNormal({rows, dim}, 21, 2.0f), DType::kF32);
    const Tensor dy = testing::ToDevice(RandomNormal({rows, dim}, 22), DType::kF32);
    const Tensor weight = testing::ToDevice(RandomNormal({dim}, 23), DType::kF32);
    for (DType dx_dtype : {DType::kF32, DType::kBF16}) {
      for (bool weighted : {true, false}) {
        const core::TensorView w = weighted ? weight.view() : core::TensorView();
        const Tensor add = testing::ToDevice(Tensor::Zeros(DType::kF32, {rows, dim}), dx_dtype);
        Tensor nan = Tensor::Empty(DType::kF32, {rows, dim});
        for (int64_t i = 0; i < nan.numel(); ++i) {
          nan.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
        }
        const Tensor overwrite = testing::ToDevice(nan, dx_dtype);
        const Tensor dw_add = testing::ToDevice(Tensor::Zeros(DType::kF32, {dim}), DType::kF32);
        const Tensor dw_over = testing::ToDevice(Tensor::Zeros(DType::kF32, {dim}), DType::kF32);
        ASSERT_TRUE(RmsNormBackward(x.view(), w, 1e-6f, dy.view(), add.view(), dw_add.view()).ok());
        ASSERT_TRUE(RmsNormBackward(x.view(), w, 1e-6f, dy.view(), overwrite.view(), dw_over.view(),
                                    DxWrite::kOverwrite)
                        .ok());
        const Tensor a = testing::ToHost(overwrite.view()), b = testing::ToHost(add.view());
        EXPECT_EQ(std::memcmp(a.data<float>(), b.data<float>(), sizeof(float) * a.numel()), 0)
            << "dim " << dim << (dx_dtype == DType::kBF16 ? " bf16" : " f32") << " dx"
            << (weighted ? " weighted" : " unweighted");
        const Tensor wa = testing::ToHost(dw_add.view()), wb = testing::ToHost(dw_over.view());
        EXPECT_EQ(std::memcmp(wa.data<float>(), wb.data<float>(), sizeof(float) * dim), 0);
      }
    }
  }
}

TEST(CudaBackward, RopeInverseRotationBothDirections) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 19, heads = 3, head_dim = 72, half = 16;
  const Tensor cos = RandomUniform({rows, half}, 16, -1.0f, 1.0f);
  Tensor sin = Tensor::Empty(DType::kF32, {rows, half});
  for (int64_t i = 0; i < rows * half; ++i) {
    sin.data<float>()[i] = std::sqrt(1.0f - cos.data<float>()[i] * cos.data<float>()[i]);
  }
  const Tensor dcos = testing::ToDevice(cos, DType::kF32), dsin = testing::ToDevice(sin, DType::kF32);
  for (bool inverse : {false, true}) {
    const Tensor grad = RandomNormal({rows, heads, head_dim}, 17);
    Tensor want = Tensor::CopyOf(grad.view());
    cpu::RopeBackwardRef<float>(want.data<float>(), rows, heads, heads * head_dim, head_dim,
                                head_dim, 2 * half, cos.data<float>(), sin.data<float>(), inverse,
                                nullptr);
    const Tensor gd = testing::ToDevice(grad, DType::kF32);
    ASSERT_TRUE(RopeBackward(gd.view(), dcos.view(), dsin.view(), inverse).ok());
    EXPECT_TRUE(testing::CloseAndReport(inverse ? "rope backward (inverse)" : "rope backward",
                                        testing::ToHost(gd.view()).view(), want.view(),
                                        {.atol = 1e-6, .rtol = 1e-5}));
  }
}

TEST(CudaBackward, SwiGluClampF32AndBf16) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 17, inter = 333;
  const Tensor gate = testing::RoundToBf16(RandomNormal({rows, inter}, 18, 3.0f));
  const Tensor up = testing::RoundToBf16(RandomNormal({rows, inter}, 19, 3.0f));
  const Tensor dy = testing::RoundToBf16(RandomNormal({rows, inter}, 20));
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (float limit : {2.5f, 0.0f}) {
      Tensor want_dg = RandomNormal({rows, inter}, 21), want_du = RandomNormal({rows, inter}, 22);
      const Tensor dg = testing::ToDevice(want_dg, DType::kF32);
      const Tensor du = testing::ToDevice(want_du, DType::kF32);
      cpu::SwiGluClampBackwardRef<float>(gate.data<float>(), up.data<float>(), limit,
                                         dy.data<float>(), want_dg.data<float>(),
                                         want_du.data<float>(), rows * inter);
      const Tensor gd = testing::ToDevice(gate, dtype), ud = testing::ToDevice(up, dtype),
                   dyd = testing::ToDevice(dy, dtype);
      ASSERT_TRUE(SwiGluClampBackward(gd.view(), ud.view(), limit, dyd.view(), dg.view(), du.view())
                      .ok());
      const std::string name = std::string("swiglu backward ") +
                               (dtype == DType::kF32 ? "f32" : "bf16 in") +
                               (limit > 0 ? " clamped" : "");
      EXPECT_TRUE(testing::CloseAndReport(name + " dgate", testing::ToHost(dg.view()).view(),
                                          want_dg.view(), {.atol = 1e-5, .rtol = 1e-5}));
      EXPECT_TRUE(testing::CloseAndReport(name + " dup", testing::ToHost(du.view()).view(),
                                          want_du.view(), {.atol = 1e-5, .rtol = 1e-5}));
    }
  }
}

// kOverwrite stores what kAdd adds to zeros, without reading the outputs (filled with garbage
// here); 8-wide rows (inter % 8 == 0, aligned) and the scalar path (a column-sliced, unaligned
// view), bf16 and f32 outputs.
TEST(CudaBackward, SwiGluClampOverwriteMatchesAddingToZeros) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 13, inter = 264;
  const Tensor gate = testing::RoundToBf16(RandomNormal({rows, inter + 8}, 23, 3.0f));
  const Tensor up = testing::RoundToBf16(RandomNormal({rows, inter + 8}, 24, 3.0f));
  const Tensor dy = testing::RoundToBf16(RandomNormal({rows, inter + 8}, 25));
  for (DType out_dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t first_col : {0, 1}) {  // 0: 8-wide rows; 1: the scalar path
      const Tensor gd = testing::ToDevice(gate, DType::kBF16),
                   ud = testing::ToDevice(up, DType::kBF16),
                   dyd = testing::ToDevice(dy, DType::kBF16);
      const auto cols = [&](const Tensor& t) {
        return t.view().Slice(1, first_col, first_col + inter);
      };
      const Tensor add_g = testing::ToDevice(Tensor::Zeros(DType::kF32, {rows, inter}), out_dtype);
      const Tensor add_u = testing::ToDevice(Tensor::Zeros(DType::kF32, {rows, inter}), out_dtype);
      const Tensor over_g = testing::ToDevice(RandomNormal({rows, inter}, 26), out_dtype);
      const Tensor over_u = testing::ToDevice(RandomNormal({rows, inter}, 27), out_dtype);
      ASSERT_TRUE(
          SwiGluClampBackward(cols(gd), cols(ud), 2.5f, cols(dyd), add_g.view(), add_u.view())
              .ok());
      ASSERT_TRUE(SwiGluClampBackward(cols(gd), cols(ud), 2.5f, cols(dyd), over_g.view(),
                                      over_u.view(), DxWrite::kOverwrite)
                      .ok());
      const std::string name = std::string("swiglu backward overwrite, ") +
                               (out_dtype == DType::kF32 ? "f32" : "bf16") + " out" +
                               (first_col == 0 ? ", 8-wide" : ", scalar");
      EXPECT_TRUE(testing::CloseAndReport(name + " dgate", testing::ToHost(over_g.view()).view(),
                                          testing::ToHost(add_g.view()).view(),
                                          {.atol = 0, .rtol = 0}));
      EXPECT_TRUE(testing::CloseAndReport(name + " dup", testing::ToHost(over_u.view()).view(),
                                          testing::ToHost(add_u.view()).view(),
                                          {.atol = 0, .rtol = 0}));
    }
  }
}

// Logits on a 1/8 grid: many exact ties, so the kept-support tie rule is exercised.
Tensor TiedLogits(int64_t rows, int64_t vocab, uint64_t seed) {
  Tensor logits = RandomNormal({rows, vocab}, seed, 3.0f);
  for (int64_t i = 0; i < rows * vocab; ++i) {
    logits.data<float>()[i] = std::round(logits.data<float>()[i] * 8.0f) / 8.0f;
  }
  return logits;
}

// fp32 row reductions against the CPU's double ones.
constexpr testing::Tolerance kLoss{.atol = 2e-5, .rtol = 2e-5};
constexpr testing::Tolerance kLossGrad{.atol = 1e-6, .rtol = 1e-4};

TEST(CudaTokenLosses, LogprobsEntropiesKeptSupportAndBackward) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 13, vocab = 1031;
  const Tensor logits = TiedLogits(rows, vocab, 23);
  std::vector<int32_t> targets(rows), kept(rows);
  for (int64_t r = 0; r < rows; ++r) {
    // The row's argmax is always in the support; some targets are arbitrary.
    int32_t best = 0;
    for (int64_t j = 1; j < vocab; ++j) {
      if (logits.data<float>()[r * vocab + j] > logits.data<float>()[r * vocab + best]) best = j;
    }
    targets[r] = r % 3 == 0 ? static_cast<int32_t>((r * 97) % vocab) : best;
    kept[r] = r % 4 == 0 ? 0 : static_cast<int32_t>(1 + (r * 131) % 400);
  }
  targets[5] = -1;       // skipped row
  kept[7] = int32_t(vocab);  // the whole vocabulary
  const Tensor grad_lp = RandomNormal({rows}, 24), grad_h = RandomNormal({rows}, 25);
  for (bool with_kept : {false, true}) {
    const int32_t* kept_ptr = with_kept ? kept.data() : nullptr;
    Tensor want_lp = Tensor::Empty(DType::kF32, {rows}), want_h = Tensor::Empty(DType::kF32, {rows});
    Tensor want_grad = Tensor::Empty(DType::kF32, {rows, vocab});
    cpu::TokenLogprobsRef<float>(logits.data<float>(), targets.data(), kept_ptr, rows, vocab,
                                 want_lp.data<float>(), want_h.data<float>(), nullptr);
    cpu::TokenLogprobsBackwardRef<float>(logits.data<float>(), targets.data(), kept_ptr, rows,
                                         vocab, grad_lp.data<float>(), grad_h.data<float>(),
                                         want_grad.data<float>(), nullptr);
    for (DType dtype : {DType::kF32, DType::kBF16}) {  // 1/8-grid logits are exact in bf16
      const Tensor ld = testing::ToDevice(logits, dtype);
      const Tensor td = I32Device(targets);
      const Tensor kd = I32Device(kept);
      const core::TensorView kv = with_kept ? kd.view() : core::TensorView();
      const Tensor lp = Tensor::Empty(DType::kF32, {rows}, DeviceAllocator());
      const Tensor h = Tensor::Empty(DType::kF32, {rows}, DeviceAllocator());
      ASSERT_TRUE(TokenLogprobs(ld.view(), td.view(), kv, lp.view(), h.view()).ok());
      const Tensor glp = testing::ToDevice(grad_lp, DType::kF32);
      const Tensor gh = testing::ToDevice(grad_h, DType::kF32);
      const Tensor grad = Tensor::Empty(DType::kF32, {rows, vocab}, DeviceAllocator());
      ASSERT_TRUE(TokenLogprobsBackward(ld.view(), td.view(), kv, glp.view(), gh.view(), grad.view())
                      .ok());
      const std::string name = std::string(with_kept ? "kept-support " : "full ") +
                               (dtype == DType::kF32 ? "f32" : "bf16");
      Tensor got_lp = testing::ToHost(lp.view());
      Tensor want_finite = Tensor::CopyOf(want_lp.view());  // want_lp serves both dtypes
      // Targets outside the kept support: -inf on both sides (compared apart).
      for (int64_t r = 0; r < rows; ++r) {
        if (std::isinf(want_finite.data<float>()[r])) {
          EXPECT_TRUE(std::isinf(got_lp.data<float>()[r]) && got_lp.data<float>()[r] < 0) << r;
          got_lp.data<float>()[r] = want_finite.data<float>()[r] = 0;
        }
      }
      EXPECT_TRUE(
          testing::CloseAndReport(name + " logprobs", got_lp.view(), want_finite.view(), kLoss));
      EXPECT_TRUE(testing::CloseAndReport(name + " entropies", testing::ToHost(h.view()).view(),
                                          want_h.view(), kLoss));
      EXPECT_TRUE(testing::CloseAndReport(name + " logprob grad", testing::ToHost(grad.view()).view(),
                                          want_grad.view(), kLossGrad));
    }
  }
}

TEST(CudaTokenLosses, MaskedCrossEntropyInTwoChunksGradInPlace) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 11, vocab = 2053, chunk = 6;
  const Tensor logits = RandomNormal({rows, vocab}, 26, 2.0f);
  std::vector<int32_t> targets(rows);
  Tensor mask = Tensor::Empty(DType::kF32, {rows});
  double mask_total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    targets[r] = static_cast<int32_t>((r * 389) % vocab);
    mask.data<float>()[r] = r % 4 == 1 ? 0.0f : 1.0f;
    mask_total += mask.data<float>()[r];
  }
  targets[1] = -7;  // masked out: ignored
  Tensor want_grad = Tensor::Empty(DType::kF32, {rows, vocab});
  const double want_loss = cpu::MaskedCrossEntropyRef<float>(
      logits.data<float>(), targets.data(), mask.data<float>(), rows, vocab,
      want_grad.data<float>(), nullptr);
  const Tensor ld = testing::ToDevice(logits, DType::kF32);
  const Tensor td = I32Device(targets), md = testing::ToDevice(mask, DType::kF32);
  const Tensor losses = Tensor::Empty(DType::kF32, {rows}, DeviceAllocator());
  for (int64_t begin = 0; begin < rows; begin += chunk) {
    const int64_t end = std::min(rows, begin + chunk);
    const core::TensorView chunk_logits = ld.view().Slice(0, begin, end);
    ASSERT_TRUE(MaskedCrossEntropy(chunk_logits, td.view().Slice(0, begin, end),
                                   md.view().Slice(0, begin, end),
                                   static_cast<float>(1.0 / mask_total),
                                   losses.view().Slice(0, begin, end), chunk_logits)
                    .ok());
  }
  const Tensor got_losses = testing::ToHost(losses.view());
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) loss += got_losses.data<float>()[r];
  std::printf("[measured] masked cross entropy: %.9g vs CPU %.9g (tolerance 2e-6 rel)\n", loss,
              want_loss);
  EXPECT_NEAR(loss, want_loss, 2e-6 * std::fabs(want_loss));
  EXPECT_TRUE(testing::CloseAndReport("cross entropy grad (in place of the logits)",
                                      testing::ToHost(ld.view()).view(), want_grad.view(),
                                      kLossGrad));
}

TEST(CudaTokenLosses, KlDivergenceWeightedGradBf16Student) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 9, vocab = 3001;
  const Tensor student = testing::RoundToBf16(RandomNormal({rows, vocab}, 27, 2.0f));
  const Tensor teacher = RandomNormal({rows, vocab}, 28, 2.0f);
  const Tensor weights = RandomUniform({rows}, 29, 0.0f, 2.0f);
  Tensor want_kl = Tensor::Empty(DType::kF32, {rows});
  Tensor want_grad = Tensor::Empty(DType::kF32, {rows, vocab});
  cpu::KlDivergenceRef<float>(student.data<float>(), teacher.data<float>(), weights.data<float>(),
                              rows, vocab, want_kl.data<float>(), want_grad.data<float>(), nullptr);
  const Tensor sd = testing::ToDevice(student, DType::kBF16);
  const Tensor tdev = testing::ToDevice(teacher, DType::kF32);
  const Tensor wd = testing::ToDevice(weights, DType::kF32);
  const Tensor kl = Tensor::Empty(DType::kF32, {rows}, DeviceAllocator());
  const Tensor grad = Tensor::Empty(DType::kF32, {rows, vocab}, DeviceAllocator());
  ASSERT_TRUE(KlDivergence(sd.view(), tdev.view(), wd.view(), kl.view(), grad.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport("kl", testing::ToHost(kl.view()).view(), want_kl.view(),
                                      kLoss));
  EXPECT_TRUE(testing::CloseAndReport("kl grad", testing::ToHost(grad.view()).view(),
                                      want_grad.view(), kLossGrad));
}

TEST(CudaTokenLosses, ChunkedHeadCrossEntropyGradients) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto blas = Blas();
  const int64_t rows = 19, hidden = 67, vocab = 1031;
  const Tensor x = testing::RoundToBf16(RandomNormal({rows, hidden}, 60));
  const Tensor head = testing::RoundToBf16(RandomNormal({vocab, hidden}, 61, 0.2f));
  std::vector<int32_t> targets(rows);
  Tensor mask = Tensor::Empty(DType::kF32, {rows});
  for (int64_t r = 0; r < rows; ++r) {
    targets[r] = static_cast<int32_t>((r * 541) % vocab);
    mask.data<float>()[r] = r % 5 == 2 ? 0.0f : 1.0f;
  }
  Tensor logits = Tensor::Empty(DType::kF32, {rows, vocab});
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < vocab; ++v) {
      double sum = 0;
      for (int64_t h = 0; h < hidden; ++h) {
        sum += double(x.data<float>()[r * hidden + h]) * head.data<float>()[v * hidden + h];
      }
      logits.data<float>()[r * vocab + v] = static_cast<float>(sum);
    }
  }
  Tensor grad = Tensor::Empty(DType::kF32, {rows, vocab});
  const double want_loss = cpu::MaskedCrossEntropyRef<float>(
      logits.data<float>(), targets.data(), mask.data<float>(), rows, vocab, grad.data<float>(),
      nullptr);
  Tensor want_dx = Tensor::Zeros(DType::kF32, {rows, hidden});
  Tensor want_dhead = Tensor::Zeros(DType::kF32, {vocab, hidden});
  cpu::LinearBackwardRef<float>(x.data<float>(), hidden, head.data<float>(), hidden,
                                grad.data<float>(), vocab, want_dx.data<float>(), hidden,
                                want_dhead.data<float>(), hidden, rows, vocab, hidden, nullptr);
  const Tensor td = I32Device(targets), md = testing::ToDevice(mask, DType::kF32);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor xd = testing::ToDevice(x, dtype), hd = testing::ToDevice(head, dtype);
    const Tensor dx = testing::ToDevice(Tensor::Zeros(DType::kF32, {rows, hidden}), DType::kF32);
    const Tensor dhead = testing::ToDevice(Tensor::Zeros(DType::kF32, {vocab, hidden}), DType::kF32);
    ChunkedCrossEntropyArgs args;
    args.hidden = xd.view(), args.head = hd.view(), args.targets = td.view(), args.mask = md.view();
    args.dhidden = dx.view(), args.dhead = dhead.view(), args.chunk_rows = 7;
    const absl::StatusOr<double> loss = ChunkedCrossEntropy(*blas, args);
    ASSERT_TRUE(loss.ok()) << loss.status();
    const bool f32 = dtype == DType::kF32;
    const std::string name = f32 ? "chunked head CE f32" : "chunked head CE bf16 (bf16 dlogits)";
    std::printf("[measured] %s loss %.9g vs CPU %.9g (tolerance 1e-5 rel)\n", name.c_str(), *loss,
                want_loss);
    EXPECT_NEAR(*loss, want_loss, 1e-5 * std::fabs(want_loss));
    // f32: the f32 reference; bf16: dlogits rounded to bf16 before the GEMMs (2^-9 relative).
    const testing::Tolerance tol = f32 ? testing::Tolerance{.atol = 1e-6, .rtol = 1e-4}
                                       : testing::Tolerance{.atol = 2e-5, .rtol = 2e-2};
    EXPECT_TRUE(testing::CloseAndReport(name + " dhidden", testing::ToHost(dx.view()).view(),
                                        want_dx.view(), tol));
    EXPECT_TRUE(testing::CloseAndReport(name + " dhead", testing::ToHost(dhead.view()).view(),
                                        want_dhead.view(), tol));
  }
}

// Logits as the loss kernels read them: `logits` [rows, V] on the device in `dtype`, each row
// starting `lead` elements into a [rows, lead + V] buffer (lead 1: rows off 16-byte alignment).
struct DeviceRows {
  Tensor buffer;
  core::TensorView view;
};
DeviceRows RowsOnDevice(const Tensor& logits, DType dtype, int64_t lead) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  Tensor padded = Tensor::Zeros(DType::kF32, {rows, lead + vocab});
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(padded.data<float>() + r * (lead + vocab) + lead, logits.data<float>() + r * vocab,
                vocab * sizeof(float));
  }
  DeviceRows out;
  out.buffer = testing::ToDevice(padded, dtype);
  out.view = out.buffer.view().Slice(1, lead, lead + vocab);
  return out;
}

// A device tensor of `shape` in `dtype` filled with NaN: a kernel must write every element.
Tensor NanOnDevice(absl::Span<const int64_t> shape, DType dtype) {
  Tensor host = Tensor::Empty(DType::kF32, shape);
  std::fill_n(host.data<float>(), host.numel(), std::numeric_limits<float>::quiet_NaN());
  return testing::ToDevice(host, dtype);
}

// The general and the row-in-registers kernel sum the same fp32 values in another order.
constexpr testing::Tolerance kSameSumsOtherOrder{.atol = 1e-7, .rtol = 1e-5};
// A gradient stored in bf16: one rounding (2^-9 relative) of the f32 value.
constexpr testing::Tolerance kBf16LossGrad{.atol = 1e-7, .rtol = 4e-3};

// TokenLogprobs and TokenLogprobsBackward without kept_counts (the row-in-registers kernel where
// it applies) against the same rows with kept_counts all 0 (the whole vocabulary, through the
// general kernel) and against the CPU, for f32 and bf16 logits and f32 and bf16 gradients. V =
// 32,768 (16 vectors a thread of f32, 8 of bf16: the training step's rows), 1,000 (one vector);
// general on both sides: 4,099 (not a multiple of 4), 40,000 (past the registers), and V = 1,000
// in rows that start 4 or 2 bytes into their buffer. Row 2 is skipped (target -1), row 3's target
// is V (outside the vocabulary: skipped on the GPU, -1 for the CPU), row 4's is V - 1.
TEST(CudaTokenLosses, InRegistersLogprobsMatchTheGeneralKernelAndCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 6;
  struct Case {
    int64_t vocab, lead;
  };
  for (const Case c :
       {Case{32768, 0}, Case{1000, 0}, Case{4099, 0}, Case{40000, 0}, Case{1000, 1}}) {
    const int64_t vocab = c.vocab;
    const Tensor logits = RandomNormal({rows, vocab}, 70 + vocab, 2.0f);
    std::vector<int32_t> targets(rows), cpu_targets(rows);
    for (int64_t r = 0; r < rows; ++r) targets[r] = static_cast<int32_t>((r * 7919 + 13) % vocab);
    targets[2] = -1;
    targets[3] = static_cast<int32_t>(vocab);
    targets[4] = static_cast<int32_t>(vocab - 1);
    for (int64_t r = 0; r < rows; ++r) cpu_targets[r] = targets[r] < vocab ? targets[r] : -1;
    const Tensor grad_lp = RandomNormal({rows}, 71), grad_h = RandomNormal({rows}, 72);
    const Tensor td = I32Device(targets), kd = I32Device(std::vector<int32_t>(rows, 0));
    const Tensor glp = testing::ToDevice(grad_lp, DType::kF32);
    const Tensor gh = testing::ToDevice(grad_h, DType::kF32);
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Tensor cpu_logits = dtype == DType::kBF16 ? testing::RoundToBf16(logits) : logits;
      Tensor want_lp = Tensor::Empty(DType::kF32, {rows});
      Tensor want_h = Tensor::Empty(DType::kF32, {rows});
      Tensor want_grad = Tensor::Empty(DType::kF32, {rows, vocab});
      cpu::TokenLogprobsRef<float>(cpu_logits.data<float>(), cpu_targets.data(), nullptr, rows,
                                   vocab, want_lp.data<float>(), want_h.data<float>(), nullptr);
      cpu::TokenLogprobsBackwardRef<float>(cpu_logits.data<float>(), cpu_targets.data(), nullptr,
                                           rows, vocab, grad_lp.data<float>(), grad_h.data<float>(),
                                           want_grad.data<float>(), nullptr);
      const DeviceRows ld = RowsOnDevice(logits, dtype, c.lead);
      const std::string name = absl::StrFormat("V %d lead %d %s logits", vocab, c.lead,
                                               dtype == DType::kF32 ? "f32" : "bf16");
      // [0]: no kept_counts (row in registers where it applies); [1]: kept_counts 0 (general).
      Tensor lp[2], h[2];
      for (int path = 0; path < 2; ++path) {
        lp[path] = NanOnDevice({rows}, DType::kF32);
        h[path] = NanOnDevice({rows}, DType::kF32);
        ASSERT_TRUE(TokenLogprobs(ld.view, td.view(), path == 0 ? core::TensorView() : kd.view(),
                                  lp[path].view(), h[path].view())
                        .ok());
      }
      const Tensor fast_lp = testing::ToHost(lp[0].view()), fast_h = testing::ToHost(h[0].view());
      EXPECT_TRUE(
          testing::CloseAndReport(name + " logprobs", fast_lp.view(), want_lp.view(), kLoss));
      EXPECT_TRUE(
          testing::CloseAndReport(name + " entropies", fast_h.view(), want_h.view(), kLoss));
      EXPECT_TRUE(testing::CloseAndReport(name + " logprobs vs general kernel", fast_lp.view(),
                                          testing::ToHost(lp[1].view()).view(),
                                          kSameSumsOtherOrder));
      EXPECT_TRUE(testing::CloseAndReport(name + " entropies vs general kernel", fast_h.view(),
                                          testing::ToHost(h[1].view()).view(),
                                          kSameSumsOtherOrder));
      for (DType grad_dtype : {DType::kF32, DType::kBF16}) {
        const bool f32_grad = grad_dtype == DType::kF32;
        Tensor grad[2];
        for (int path = 0; path < 2; ++path) {
          grad[path] = NanOnDevice({rows, vocab}, grad_dtype);
          ASSERT_TRUE(TokenLogprobsBackward(ld.view, td.view(),
                                            path == 0 ? core::TensorView() : kd.view(), glp.view(),
                                            gh.view(), grad[path].view())
                          .ok());
        }
        const Tensor fast = testing::ToHost(grad[0].view());
        const std::string grad_name = name + (f32_grad ? " f32 grad" : " bf16 grad");
        EXPECT_TRUE(testing::CloseAndReport(grad_name, fast.view(), want_grad.view(),
                                            f32_grad ? kLossGrad : kBf16LossGrad));
        // bf16 gradients of the two kernels may round a value apart by one bf16 step.
        EXPECT_TRUE(testing::CloseAndReport(grad_name + " vs general kernel", fast.view(),
                                            testing::ToHost(grad[1].view()).view(),
                                            f32_grad ? kSameSumsOtherOrder : kBf16LossGrad));
      }
    }
  }
}

// MaskedCrossEntropy as the training step runs it, through the row-in-registers kernel (V =
// 32,768 and 1,000) and the general one (4,099): f32 and bf16 logits, the gradient in place of the
// logits or into a separate f32 or bf16 tensor (which starts as NaN: masked rows write zeros).
// Row 1 has mask 0 and target -7, row 5 mask 0 and target V (both ignored).
TEST(CudaTokenLosses, MaskedCrossEntropyInRegistersInPlaceAndBf16Grad) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 7;
  for (const int64_t vocab : {int64_t{32768}, int64_t{1000}, int64_t{4099}}) {
    const Tensor logits = RandomNormal({rows, vocab}, 80 + vocab, 2.0f);
    std::vector<int32_t> targets(rows);
    Tensor mask = Tensor::Empty(DType::kF32, {rows});
    double mask_total = 0;
    for (int64_t r = 0; r < rows; ++r) {
      targets[r] = static_cast<int32_t>((r * 389 + 5) % vocab);
      mask.data<float>()[r] = r == 1 || r == 5 ? 0.0f : 0.5f + 0.25f * float(r % 3);
      mask_total += mask.data<float>()[r];
    }
    targets[1] = -7;
    targets[5] = static_cast<int32_t>(vocab);
    const Tensor td = I32Device(targets), md = testing::ToDevice(mask, DType::kF32);
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Tensor cpu_logits = dtype == DType::kBF16 ? testing::RoundToBf16(logits) : logits;
      Tensor want_grad = Tensor::Empty(DType::kF32, {rows, vocab});
      const double want_loss = cpu::MaskedCrossEntropyRef<float>(
          cpu_logits.data<float>(), targets.data(), mask.data<float>(), rows, vocab,
          want_grad.data<float>(), nullptr);
      // In place (the grad in the logits' dtype), then separate f32 and bf16 gradients.
      for (int out = 0; out < 3; ++out) {
        const Tensor ld = testing::ToDevice(logits, dtype);
        const DType grad_dtype = out == 0 ? dtype : out == 1 ? DType::kF32 : DType::kBF16;
        const Tensor separate = out == 0 ? Tensor() : NanOnDevice({rows, vocab}, grad_dtype);
        const core::TensorView grad = out == 0 ? ld.view() : separate.view();
        const Tensor losses = NanOnDevice({rows}, DType::kF32);
        ASSERT_TRUE(MaskedCrossEntropy(ld.view(), td.view(), md.view(),
                                       static_cast<float>(1.0 / mask_total), losses.view(), grad)
                        .ok());
        const std::string name = absl::StrFormat(
            "masked CE V %d %s logits, %s %s grad", vocab, dtype == DType::kF32 ? "f32" : "bf16",
            out == 0 ? "in-place" : "separate", grad_dtype == DType::kF32 ? "f32" : "bf16");
        const Tensor got_losses = testing::ToHost(losses.view());
        double loss = 0;
        for (int64_t r = 0; r < rows; ++r) loss += got_losses.data<float>()[r];
        std::printf("[measured] %s: loss %.9g vs CPU %.9g (tolerance 2e-6 rel)\n", name.c_str(),
                    loss, want_loss);
        EXPECT_NEAR(loss, want_loss, 2e-6 * std::fabs(want_loss)) << name;
        EXPECT_EQ(got_losses.data<float>()[1], 0.0f) << name;
        EXPECT_EQ(got_losses.data<float>()[5], 0.0f) << name;
        EXPECT_TRUE(testing::CloseAndReport(name, testing::ToHost(grad).view(), want_grad.view(),
                                            grad_dtype == DType::kF32 ? kLossGrad : kBf16LossGrad));
      }
    }
  }
}

}  // namespace
}  // namespace v4rl::kernels::cuda
