// cuBLASLt GEMM (bf16 x bf16 -> fp32 accumulate -> bf16|f32) against the CPU LinearRef run on the
// same bf16-rounded inputs, on odd sizes (gpu label; skips without a device).
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/linear.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

std::unique_ptr<GemmHandle> MakeHandle() {
  auto handle = GemmHandle::Create();
  V4RL_CHECK(handle.ok()) << handle.status().ToString();
  return std::move(*handle);
}

// fp32 accumulation in another order than the CPU: |err| well below 1e-3 at these K; a bf16
// output adds at most half an ulp (2^-9 relative).
constexpr testing::Tolerance kF32Out{.atol = 1e-3, .rtol = 1e-4};
constexpr testing::Tolerance kBf16Out{.atol = 1e-3, .rtol = 4e-3};

void CheckGemm(int64_t m, int64_t n, int64_t k, DType out_dtype, uint64_t seed) {
  const Tensor x = testing::RoundToBf16(RandomNormal({m, k}, seed));
  const Tensor w = testing::RoundToBf16(RandomNormal({n, k}, seed + 1, 0.5f));
  Tensor want = Tensor::Empty(DType::kF32, {m, n});
  cpu::LinearRef(x.data<float>(), k, w.data<float>(), k, want.data<float>(), n, m, n, k, nullptr);
  const Tensor dx = testing::ToDevice(x, DType::kBF16);
  const Tensor dw = testing::ToDevice(w, DType::kBF16);
  const Tensor dout = Tensor::Empty(out_dtype, {m, n}, DeviceAllocator());
  auto handle = MakeHandle();
  ASSERT_TRUE(Gemm(*handle, dx.view(), dw.view(), dout.view()).ok());
  const Tensor got = testing::ToHost(dout.view());
  EXPECT_TRUE(testing::CloseAndReport(
      "gemm " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) +
          (out_dtype == DType::kF32 ? " f32 out" : " bf16 out"),
      got.view(), want.view(), out_dtype == DType::kF32 ? kF32Out : kBf16Out));
}

TEST(CudaGemm, OddSizesBf16AndF32Out) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckGemm(17, 77, 133, DType::kF32, 1);  // odd K: leading dims cuBLASLt may reject
  CheckGemm(17, 77, 133, DType::kBF16, 2);
  CheckGemm(17, 264, 1032, DType::kBF16, 3);  // aligned K
  CheckGemm(1, 129, 512, DType::kF32, 4);     // one decode row
  CheckGemm(300, 1000, 256, DType::kBF16, 5);
}

TEST(CudaGemm, StridedRowsAlphaAndAccumulate) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t m = 17, n = 45, k = 64, wide = 96;
  const Tensor x = testing::RoundToBf16(RandomNormal({m, wide}, 11));
  const Tensor w = testing::RoundToBf16(RandomNormal({n, k}, 12));
  const Tensor base = RandomNormal({m, n}, 13);
  // want = base + 0.5 · x[:, 8:72] · wᵀ
  Tensor want = Tensor::Empty(DType::kF32, {m, n});
  cpu::LinearRef(x.data<float>() + 8, wide, w.data<float>(), k, want.data<float>(), n, m, n, k,
                 nullptr);
  for (int64_t i = 0; i < m * n; ++i) {
    want.data<float>()[i] = base.data<float>()[i] + 0.5f * want.data<float>()[i];
  }
  const Tensor dx = testing::ToDevice(x, DType::kBF16);
  const Tensor dw = testing::ToDevice(w, DType::kBF16);
  const Tensor dout = testing::ToDevice(base, DType::kF32);
  auto handle = MakeHandle();
  ASSERT_TRUE(Gemm(*handle, dx.view().Slice(1, 8, 8 + k), dw.view(), dout.view(), 0.5f,
                   /*accumulate=*/true)
                  .ok());
  EXPECT_TRUE(testing::CloseAndReport("gemm strided alpha accumulate",
                                      testing::ToHost(dout.view()).view(), want.view(), kF32Out));
}

TEST(CudaGemm, GroupedMatchesPerExpertReference) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t experts = 5, n = 72, k = 136;
  const std::vector<int64_t> offsets = {0, 7, 7, 20, 21, 33};  // expert 1 empty
  const int64_t rows = offsets.back();
  const Tensor x = testing::RoundToBf16(RandomNormal({rows, k}, 21));
  const Tensor w = testing::RoundToBf16(RandomNormal({experts, n, k}, 22, 0.3f));
  Tensor want = Tensor::Empty(DType::kF32, {rows, n});
  for (int64_t e = 0; e < experts; ++e) {
    cpu::LinearRef(x.data<float>() + offsets[e] * k, k, w.data<float>() + e * n * k, k,
                   want.data<float>() + offsets[e] * n, n, offsets[e + 1] - offsets[e], n, k,
                   nullptr);
  }
  const Tensor dx = testing::ToDevice(x, DType::kBF16);
  const Tensor dw = testing::ToDevice(w, DType::kBF16);
  const Tensor dout = Tensor::Empty(DType::kF32, {rows, n}, DeviceAllocator());
  auto handle = MakeHandle();
  ASSERT_TRUE(GroupedGemm(*handle, dx.view(), dw.view(), offsets, dout.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport("grouped gemm", testing::ToHost(dout.view()).view(),
                                      want.view(), kF32Out));
}

// The output projection's layout: x [M, G, K] token-major read as [G, M, K], out [M, G, N] written
// as [G, M, N] (interleaved batch entries), each group against its own weight.
TEST(CudaGemm, BatchedInterleavedGroupsMatchPerGroupReference) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t groups = 3, m = 17, n = 40, k = 72;
  const Tensor x = testing::RoundToBf16(RandomNormal({m, groups, k}, 31));
  const Tensor w = testing::RoundToBf16(RandomNormal({groups, n, k}, 32, 0.3f));
  Tensor want = Tensor::Empty(DType::kF32, {m, groups, n});
  for (int64_t g = 0; g < groups; ++g) {
    cpu::LinearRef(x.data<float>() + g * k, groups * k, w.data<float>() + g * n * k, k,
                   want.data<float>() + g * n, groups * n, m, n, k, nullptr);
  }
  const Tensor dx = testing::ToDevice(x, DType::kBF16);
  const Tensor dw = testing::ToDevice(w, DType::kBF16);
  auto handle = MakeHandle();
  for (DType out_dtype : {DType::kF32, DType::kBF16}) {
    const Tensor dout = Tensor::Empty(out_dtype, {m, groups, n}, DeviceAllocator());
    ASSERT_TRUE(StridedBatchedGemm(*handle, dx.view().Transpose(0, 1), dw.view(),
                                   dout.view().Transpose(0, 1))
                    .ok());
    EXPECT_TRUE(testing::CloseAndReport(
        out_dtype == DType::kF32 ? "batched gemm f32 out" : "batched gemm bf16 out",
        testing::ToHost(dout.view()).view(), want.view(),
        out_dtype == DType::kF32 ? kF32Out : kBf16Out));
  }
  // Overlapping outputs and mismatched batches are refused.
  const Tensor small = Tensor::Empty(DType::kF32, {m, n}, DeviceAllocator());
  core::TensorView overlapping = small.view().Reshape({1, m, n});
  overlapping.shape[0] = groups;
  overlapping.strides[0] = 1;
  EXPECT_FALSE(StridedBatchedGemm(*handle, dx.view().Transpose(0, 1), dw.view(), overlapping).ok());
  EXPECT_FALSE(StridedBatchedGemm(*handle, dx.view().Transpose(0, 1), dw.view().Slice(0, 0, 2),
                                  small.view().Reshape({1, m, n}))
                   .ok());
}

TEST(CudaGemm, RejectsMismatchedShapesAndHostViews) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto handle = MakeHandle();
  const Tensor dx = Tensor::Empty(DType::kBF16, {4, 8}, DeviceAllocator());
  const Tensor dw = Tensor::Empty(DType::kBF16, {3, 9}, DeviceAllocator());
  const Tensor dout = Tensor::Empty(DType::kF32, {4, 3}, DeviceAllocator());
  EXPECT_FALSE(Gemm(*handle, dx.view(), dw.view(), dout.view()).ok());
  const Tensor host = Tensor::Empty(DType::kBF16, {3, 8});
  EXPECT_FALSE(Gemm(*handle, dx.view(), host.view(), dout.view()).ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
