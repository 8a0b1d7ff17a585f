// SplitColumns (kernels/cuda/column_split.h) against plain loops: bf16 slices copied bit for bit,
// f32 slices scaled and biased at positions given or r mod seq_len, in one launch; bad slices are
// refused (gpu label; skips without a device).
#include <cstdint>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/column_split.h"
#include "kernels/cuda/device.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

// Bitwise equality of two f32 tensors (the kernel's arithmetic is the loop's, rounding included).
void ExpectBitEqual(const char* name, const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.numel(), want.numel()) << name;
  EXPECT_EQ(std::memcmp(got.data<float>(), want.data<float>(), want.numel() * sizeof(float)), 0)
      << name;
}

void CheckSplit(bool with_positions) {
  const int64_t rows = 19, seq_len = 7, ratio = 4;
  const int64_t w0 = 24, w1 = 9, f0 = 16, f1 = 5;  // bf16 widths, f32 widths
  const Tensor fused_bf16 = testing::RoundToBf16(RandomNormal({rows, 3 + w0 + w1}, 41));
  const Tensor fused_f32 = RandomNormal({rows, f0 + f1 + 2}, 42);
  const Tensor bias = RandomNormal({ratio, f0}, 43);
  std::vector<int32_t> positions(rows);
  for (int64_t r = 0; r < rows; ++r) positions[r] = static_cast<int32_t>(5 * r + 3);
  const float scale = 0.35355339f;
  // Expected: the slices as loops compute them.
  Tensor want_f0 = Tensor::Empty(DType::kF32, {rows, f0});
  Tensor want_f1 = Tensor::Empty(DType::kF32, {rows, f1});
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t slot = (with_positions ? positions[r] : r % seq_len) % ratio;
    for (int64_t c = 0; c < f0; ++c) {
      want_f0.data<float>()[r * f0 + c] =
          fused_f32.data<float>()[r * (f0 + f1 + 2) + c] + bias.data<float>()[slot * f0 + c];
    }
    for (int64_t c = 0; c < f1; ++c) {
      want_f1.data<float>()[r * f1 + c] =
          fused_f32.data<float>()[r * (f0 + f1 + 2) + f0 + c] * scale;
    }
  }
  const Tensor d_bf16 = testing::ToDevice(fused_bf16, DType::kBF16);
  const Tensor d_f32 = testing::ToDevice(fused_f32, DType::kF32);
  const Tensor d_bias = testing::ToDevice(bias, DType::kF32);
  Tensor host_positions = Tensor::Empty(DType::kI32, {rows});
  std::memcpy(host_positions.data<int32_t>(), positions.data(), rows * sizeof(int32_t));
  const Tensor d_positions = testing::ToDevice(host_positions, DType::kI32);
  const Tensor out0 = Tensor::Empty(DType::kBF16, {rows, w0}, DeviceAllocator());
  const Tensor out1 = Tensor::Empty(DType::kBF16, {rows, w1}, DeviceAllocator());
  const Tensor out2 = Tensor::Empty(DType::kF32, {rows, f0}, DeviceAllocator());
  const Tensor out3 = Tensor::Empty(DType::kF32, {rows, f1}, DeviceAllocator());
  const std::vector<ColumnSlice> slices = {
      {d_bf16.view().Slice(1, 3, 3 + w0), out0.view(), core::TensorView()},
      {d_bf16.view().Slice(1, 3 + w0, 3 + w0 + w1), out1.view(), core::TensorView()},
      {d_f32.view().Slice(1, 0, f0), out2.view(), d_bias.view()},
      {d_f32.view().Slice(1, f0, f0 + f1), out3.view(), core::TensorView(), scale},
  };
  ASSERT_TRUE(SplitColumns(slices, with_positions ? d_positions.view() : core::TensorView(),
                           with_positions ? 0 : seq_len)
                  .ok());
  // bf16 slices: the rounded values, exactly.
  const Tensor got0 = testing::ToHost(out0.view()), got1 = testing::ToHost(out1.view());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < w0; ++c) {
      ASSERT_EQ(got0.data<float>()[r * w0 + c],
                fused_bf16.data<float>()[r * (3 + w0 + w1) + 3 + c]);
    }
    for (int64_t c = 0; c < w1; ++c) {
      ASSERT_EQ(got1.data<float>()[r * w1 + c],
                fused_bf16.data<float>()[r * (3 + w0 + w1) + 3 + w0 + c]);
    }
  }
  ExpectBitEqual("biased f32 slice", testing::ToHost(out2.view()), want_f0);
  ExpectBitEqual("scaled f32 slice", testing::ToHost(out3.view()), want_f1);
}

TEST(CudaColumnSplit, SlicesBiasAndScaleAtSequencePositions) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckSplit(/*with_positions=*/false);
}

TEST(CudaColumnSplit, SlicesBiasAndScaleAtGivenPositions) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckSplit(/*with_positions=*/true);
}

TEST(CudaColumnSplit, RefusesMismatchedSlices) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor src = Tensor::Empty(DType::kF32, {6, 10}, DeviceAllocator());
  const Tensor dst = Tensor::Empty(DType::kF32, {6, 4}, DeviceAllocator());
  const Tensor dst_bf16 = Tensor::Empty(DType::kBF16, {6, 4}, DeviceAllocator());
  const Tensor bias = Tensor::Empty(DType::kF32, {3, 5}, DeviceAllocator());
  const core::TensorView none;
  // Width mismatch, dtype mismatch, bias of the wrong width, dst overlapping src, no seq_len.
  EXPECT_FALSE(SplitColumns({{src.view().Slice(1, 0, 5), dst.view(), none}}, none, 1).ok());
  EXPECT_FALSE(SplitColumns({{src.view().Slice(1, 0, 4), dst_bf16.view(), none}}, none, 1).ok());
  EXPECT_FALSE(SplitColumns({{src.view().Slice(1, 0, 4), dst.view(), bias.view()}}, none, 1).ok());
  const core::TensorView inside_src =
      core::TensorView::Contiguous(src.view().data, DType::kF32, {6, 4}, core::Device::kCuda);
  EXPECT_FALSE(SplitColumns({{src.view().Slice(1, 0, 4), inside_src, none}}, none, 1).ok());
  EXPECT_FALSE(SplitColumns({{src.view().Slice(1, 0, 4), dst.view(), none}}, none, 0).ok());
  EXPECT_TRUE(SplitColumns({{src.view().Slice(1, 0, 4), dst.view(), none}}, none, 1).ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
