// GPU conversion kernels against core's CPU conversions on an odd size (gpu label; skips
// without a device).
#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

TEST(CudaConvert, F32ToBf16MatchesCpuOnOddSize) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t n = 100003;
  core::Tensor host = testing::RandomNormal({n}, 3, 100.0f);
  host.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  host.data<float>()[1] = core::BitsToFloat(0x3F818000);  // a rounding tie
  core::Tensor device_in = core::Tensor::Empty(core::DType::kF32, {n}, DeviceAllocator());
  core::Tensor device_out = core::Tensor::Empty(core::DType::kBF16, {n}, DeviceAllocator());
  core::Tensor back = core::Tensor::Empty(core::DType::kBF16, {n});
  ASSERT_TRUE(Copy(host.view(), device_in.view()).ok());
  ASSERT_TRUE(F32ToBf16(device_in.view(), device_out.view()).ok());
  ASSERT_TRUE(Copy(device_out.view(), back.view()).ok());
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t expected = core::FloatToBf16(host.data<float>()[i]);
    if (i == 0) {
      EXPECT_TRUE(std::isnan(core::Bf16ToFloat(back.data<uint16_t>()[i])));
      continue;
    }
    ASSERT_EQ(back.data<uint16_t>()[i], expected) << "index " << i;
  }
  core::Tensor round_trip = core::Tensor::Empty(core::DType::kF32, {n}, DeviceAllocator());
  ASSERT_TRUE(Bf16ToF32(device_out.view(), round_trip.view()).ok());
  EXPECT_TRUE(Synchronize().ok());
  auto description = DeviceDescription();
  ASSERT_TRUE(description.ok());
  std::printf("device: %s\n", description->c_str());
}

// Row views of a wider buffer (the strided GEMM operands of bf16 products): the four-column path
// (cols and row stride multiples of 4) and the one-element path, each equal to core's rounding.
TEST(CudaConvert, F32ToBf16RowsCopiesStridedRows) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const struct {
    int64_t rows, cols, ld, first_col;
  } cases[] = {{37, 64, 72, 4}, {29, 33, 41, 3}, {1, 8, 8, 0}};
  for (const auto& [rows, cols, ld, first_col] : cases) {
    const core::Tensor host = testing::RandomNormal({rows, ld}, 7, 10.0f);
    core::Tensor device_in = core::Tensor::Empty(core::DType::kF32, {rows, ld}, DeviceAllocator());
    core::Tensor device_out =
        core::Tensor::Empty(core::DType::kBF16, {rows, cols}, DeviceAllocator());
    core::Tensor back = core::Tensor::Empty(core::DType::kBF16, {rows, cols});
    ASSERT_TRUE(Copy(host.view(), device_in.view()).ok());
    ASSERT_TRUE(
        F32ToBf16Rows(device_in.view().Slice(1, first_col, first_col + cols), device_out.view())
            .ok());
    ASSERT_TRUE(Copy(device_out.view(), back.view()).ok());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        ASSERT_EQ(back.data<uint16_t>()[r * cols + c],
                  core::FloatToBf16(host.data<float>()[r * ld + first_col + c]))
            << "rows " << rows << " cols " << cols << " at " << r << ", " << c;
      }
    }
  }
  // A shape mismatch is refused.
  core::Tensor in = core::Tensor::Empty(core::DType::kF32, {4, 8}, DeviceAllocator());
  core::Tensor out = core::Tensor::Empty(core::DType::kBF16, {4, 7}, DeviceAllocator());
  EXPECT_FALSE(F32ToBf16Rows(in.view(), out.view()).ok());
}

TEST(CudaConvert, RejectsHostViews) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  core::Tensor host = core::Tensor::Empty(core::DType::kF32, {4});
  core::Tensor out = core::Tensor::Empty(core::DType::kBF16, {4});
  EXPECT_FALSE(F32ToBf16(host.view(), out.view()).ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
