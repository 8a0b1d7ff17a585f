// TensorView geometry, Tensor ownership, copies and the Arena.
#include "core/tensor.h"

#include "core/arena.h"
#include "gtest/gtest.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::core {
namespace {

TEST(TensorView, ContiguousStridesAndSlicing) {
  Tensor t = Tensor::Empty(DType::kF32, {2, 3, 4});
  const TensorView& v = t.view();
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.strides[0], 12);
  EXPECT_EQ(v.strides[2], 1);
  EXPECT_TRUE(v.is_contiguous());
  TensorView s = v.Slice(1, 1, 3);
  EXPECT_EQ(s.size(1), 2);
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.data_as<float>(), t.data<float>() + 4);
  TensorView row = v.Select(0, 1);
  EXPECT_EQ(row.rank, 2);
  EXPECT_EQ(row.data_as<float>(), t.data<float>() + 12);
  EXPECT_EQ(v.Reshape({6, 4}).size(-2), 6);
  EXPECT_EQ(v.Transpose(0, 2).stride(0), 1);
  EXPECT_EQ(v.DebugString(), "[2, 3, 4] f32");
}

TEST(TensorView, CopyOfStridedViewMatchesElements) {
  Tensor t = testing::RandomNormal({3, 5}, 7);
  Tensor transposed = Tensor::CopyOf(t.view().Transpose(0, 1));
  ASSERT_EQ(transposed.size(0), 5);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 5; ++j) {
      EXPECT_EQ(transposed.data<float>()[j * 3 + i], t.data<float>()[i * 5 + j]);
    }
  }
}

TEST(TensorView, ToFloat32ConvertsBf16Exactly) {
  Tensor bf = Tensor::Empty(DType::kBF16, {3});
  auto* raw = bf.data<uint16_t>();
  raw[0] = FloatToBf16(1.5f);
  raw[1] = FloatToBf16(-2.25f);
  raw[2] = FloatToBf16(0.0f);
  EXPECT_EQ(bf.ToFloatVector(), (std::vector<float>{1.5f, -2.25f, 0.0f}));
}

TEST(TensorView, ZeroSizedTensors) {
  Tensor t = Tensor::Zeros(DType::kF32, {0, 4});
  EXPECT_EQ(t.numel(), 0);
  EXPECT_TRUE(t.defined());
  EXPECT_TRUE(Tensor::CopyOf(t.view()).defined());
}

TEST(Arena, AllocationsAreAlignedStableAndReset) {
  Arena arena(CpuAllocator(), 1024);
  TensorView a = arena.AllocateZeros(DType::kF32, {10});
  TensorView b = arena.Allocate(DType::kF32, {1000});  // larger than a block
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % 64, 0u);
  EXPECT_EQ(a.data_as<float>()[9], 0.0f);
  a.data_as<float>()[0] = 3.0f;
  arena.Allocate(DType::kBF16, {7});
  EXPECT_EQ(a.data_as<float>()[0], 3.0f);  // earlier allocations never move
  const int64_t peak = arena.peak_bytes();
  EXPECT_GE(peak, 4040);
  arena.Reset();
  EXPECT_EQ(arena.bytes_in_use(), 0);
  EXPECT_EQ(arena.peak_bytes(), peak);
}

TEST(TensorCompare, ReportsFirstMismatch) {
  Tensor a = Tensor::FromFloats({4}, {1, 2, 3, 4});
  Tensor b = Tensor::FromFloats({4}, {1, 2, 3.5, 4});
  EXPECT_TRUE(testing::AllClose(a.view(), a.view()));
  ::testing::AssertionResult result = testing::AllClose(a.view(), b.view());
  EXPECT_FALSE(result);
  EXPECT_NE(std::string(result.message()).find("first_mismatch=2"), std::string::npos);
  EXPECT_NEAR(testing::Compare(a.view(), b.view()).max_abs_error, 0.5, 1e-12);
}

}  // namespace
}  // namespace v4rl::core
