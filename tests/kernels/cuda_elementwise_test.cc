// CUDA RMSNorm, RoPE tables (YaRN), RoPE rotation and clamped SwiGLU against the CPU references on
// the same bf16-rounded inputs, odd sizes (gpu label; skips without a device).
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "model/rope.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

// bf16 outputs: half an ulp (2^-9 relative) plus fp32 reduction-order noise.
constexpr testing::Tolerance kBf16Out{.atol = 1e-5, .rtol = 4e-3};

TEST(CudaElementwise, RmsNormBf16WithWeightOddAndVectorSizes) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // The scalar path; 8-wide rows in registers (one step, three of four), and looped (> 4 steps).
  for (int64_t dim : {1031, 1024, 6152, 8200}) {
    const int64_t rows = 17;
    const Tensor x = testing::RoundToBf16(RandomNormal({rows, dim}, 1, 3.0f));
    const Tensor weight = RandomNormal({dim}, 2);
    Tensor want = Tensor::Empty(DType::kF32, {rows, dim});
    cpu::RmsNormRef(x.data<float>(), dim, weight.data<float>(), 1e-6f, want.data<float>(), dim,
                    rows, dim, nullptr);
    const Tensor dx = testing::ToDevice(x, DType::kBF16);
    const Tensor dw = testing::ToDevice(weight, DType::kF32);
    const Tensor dout = Tensor::Empty(DType::kBF16, {rows, dim}, DeviceAllocator());
    ASSERT_TRUE(RmsNorm(dx.view(), dw.view(), 1e-6f, dout.view()).ok());
    EXPECT_TRUE(testing::CloseAndReport("rmsnorm bf16 weighted D=" + std::to_string(dim),
                                        testing::ToHost(dout.view()).view(), want.view(),
                                        kBf16Out));
  }
}

// In place: a strided column block (the scalar path) and whole 8,192-wide rows (8-wide, held in
// registers).
TEST(CudaElementwise, RmsNormF32StridedRowsInPlaceUnweighted) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 17;
  for (const auto [dim, wide, first] : {std::array<int64_t, 3>{77, 100, 5}, {8192, 8192, 0}}) {
    const Tensor x = RandomNormal({rows, wide}, 3);
    Tensor want = Tensor::CopyOf(x.view());
    cpu::RmsNormRef(x.data<float>() + first, wide, static_cast<const float*>(nullptr), 1e-6f,
                    want.data<float>() + first, wide, rows, dim, nullptr);
    const Tensor dx = testing::ToDevice(x, DType::kF32);
    const core::TensorView slice = dx.view().Slice(1, first, first + dim);
    ASSERT_TRUE(RmsNorm(slice, core::TensorView(), 1e-6f, slice).ok());
    EXPECT_TRUE(testing::CloseAndReport("rmsnorm f32 in place D=" + std::to_string(dim),
                                        testing::ToHost(dx.view()).view(), want.view(),
                                        {.atol = 1e-6, .rtol = 1e-5}));
  }
}

TEST(CudaElementwise, RopeTableMatchesCpuYarnTable) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  model::YarnConfig yarn;
  yarn.enabled = true;
  yarn.factor = 16;
  yarn.original_max_position_embeddings = 65536;
  const model::RopeTable table(160000.0, 64, &yarn);
  const int64_t count = 37, first = 1000003, stride = 4;
  Tensor want_cos = Tensor::Empty(DType::kF32, {count, 32});
  Tensor want_sin = Tensor::Empty(DType::kF32, {count, 32});
  table.Fill(first, stride, count, want_cos.data<float>(), want_sin.data<float>());
  const Tensor inv_freq =
      testing::ToDevice(Tensor::FromFloats({32}, table.inv_freq()), DType::kF32);
  const Tensor cos = Tensor::Empty(DType::kF32, {count, 32}, DeviceAllocator());
  const Tensor sin = Tensor::Empty(DType::kF32, {count, 32}, DeviceAllocator());
  ASSERT_TRUE(RopeTableFill(inv_freq.view(), first, stride, cos.view(), sin.view()).ok());
  // Same f32 angle, cos/sin in double on both sides: equal up to the last bit of a double
  // rounding (CUDA's double sin/cos are within 2 ulp of double).
  EXPECT_TRUE(testing::CloseAndReport("rope table cos", testing::ToHost(cos.view()).view(),
                                      want_cos.view(), {.atol = 1e-7, .rtol = 0}));
  EXPECT_TRUE(testing::CloseAndReport("rope table sin", testing::ToHost(sin.view()).view(),
                                      want_sin.view(), {.atol = 1e-7, .rtol = 0}));
}

TEST(CudaElementwise, RopeRotationBf16StridedHeadsAndInverse) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 17, heads = 5, head_dim = 72, half = 16;
  const model::RopeTable table(10000.0, 2 * half, nullptr);
  Tensor cos, sin;
  table.Make(3, 1, rows, &cos, &sin);
  const Tensor dcos = testing::ToDevice(cos, DType::kF32);
  const Tensor dsin = testing::ToDevice(sin, DType::kF32);
  for (bool inverse : {false, true}) {
    // x is [rows, 6 heads, 72] on the device; the op rotates heads 1..5 (a strided view).
    const Tensor x = testing::RoundToBf16(RandomNormal({rows, heads + 1, head_dim}, 7 + inverse));
    Tensor want = Tensor::CopyOf(x.view());
    cpu::RopeRef(want.data<float>() + head_dim, rows, heads, (heads + 1) * head_dim, head_dim,
                 head_dim, 2 * half, cos.data<float>(), sin.data<float>(), inverse, nullptr);
    const Tensor dx = testing::ToDevice(x, DType::kBF16);
    ASSERT_TRUE(ApplyRope(dx.view().Slice(1, 1, heads + 1), dcos.view(), dsin.view(), inverse).ok());
    EXPECT_TRUE(testing::CloseAndReport(inverse ? "rope bf16 inverse" : "rope bf16",
                                        testing::ToHost(dx.view()).view(), want.view(), kBf16Out));
  }
}

// RmsNormRope against RmsNorm then ApplyRope, bit for bit: a decode step's query heads
// (bf16 [17, 16, 512], unweighted, 64 rotated channels), its K=V row (a strided column slice of a
// wider bf16 GEMM output, f32 weight) and shapes that take the two launches (a rope part
// starting off a multiple of 8; D = 333, no 8-wide access).
void CheckRmsNormRope(int64_t tokens, int64_t heads, int64_t dim, int64_t half, int64_t ld,
                      bool weighted, uint64_t seed) {
  const Tensor x = testing::ToDevice(RandomNormal({tokens * heads, ld}, seed, 3.0f), DType::kBF16);
  const core::TensorView rows = x.view().Slice(1, ld - dim, ld);  // [tokens·heads, dim] row view
  const Tensor weight = testing::ToDevice(RandomNormal({dim}, seed + 1, 1.0f), DType::kF32);
  const Tensor cos = testing::ToDevice(RandomNormal({tokens, half}, seed + 2, 1.0f), DType::kF32);
  const Tensor sin = testing::ToDevice(RandomNormal({tokens, half}, seed + 3, 1.0f), DType::kF32);
  const core::TensorView w = weighted ? weight.view() : core::TensorView();
  const Tensor want = Tensor::Empty(DType::kBF16, {tokens, heads, dim}, DeviceAllocator());
  const Tensor got = Tensor::Empty(DType::kBF16, {tokens, heads, dim}, DeviceAllocator());
  ASSERT_TRUE(RmsNorm(rows, w, 1e-6f, want.view()).ok());
  ASSERT_TRUE(ApplyRope(want.view(), cos.view(), sin.view(), /*inverse=*/false).ok());
  ASSERT_TRUE(RmsNormRope(rows, w, 1e-6f, cos.view(), sin.view(), heads, got.view()).ok());
  const Tensor a = testing::ToHost(got.view()), b = testing::ToHost(want.view());
  EXPECT_EQ(std::memcmp(a.data<float>(), b.data<float>(), sizeof(float) * a.numel()), 0)
      << "tokens " << tokens << " heads " << heads << " dim " << dim << " half " << half;
}

TEST(CudaElementwise, RmsNormRopeEqualsRmsNormThenRope) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckRmsNormRope(17, 16, 512, 32, 512, /*weighted=*/false, 1);  // query heads
  CheckRmsNormRope(17, 1, 512, 32, 1536, /*weighted=*/true, 2);   // K=V row of a fused GEMM
  CheckRmsNormRope(5, 3, 96, 14, 96, /*weighted=*/true, 3);       // rope from column 68
  CheckRmsNormRope(4, 2, 333, 16, 333, /*weighted=*/true, 4);     // no 8-wide rows
}

// RopeRounding::kAfterRotation (the training forward's q and kv) against RmsNorm into f32,
// ApplyRope on f32 and F32ToBf16, bit for bit: f32 x, bf16 out; 17 tokens of 3 heads (rope from
// column 56 of 72), the mid config's query heads (16 x 512, 64 rotated) and a weighted K=V row.
// Rows without 8-wide access are refused rather than rounded twice.
void CheckRmsNormRopeAfterRotation(int64_t tokens, int64_t heads, int64_t dim, int64_t half,
                                   bool weighted, uint64_t seed) {
  const Tensor x = testing::ToDevice(RandomNormal({tokens * heads, dim}, seed, 3.0f), DType::kF32);
  const Tensor weight = testing::ToDevice(RandomNormal({dim}, seed + 1, 1.0f), DType::kF32);
  const Tensor cos = testing::ToDevice(RandomNormal({tokens, half}, seed + 2, 1.0f), DType::kF32);
  const Tensor sin = testing::ToDevice(RandomNormal({tokens, half}, seed + 3, 1.0f), DType::kF32);
  const core::TensorView w = weighted ? weight.view() : core::TensorView();
  const Tensor f32 = Tensor::Empty(DType::kF32, {tokens, heads, dim}, DeviceAllocator());
  const Tensor want = Tensor::Empty(DType::kBF16, {tokens, heads, dim}, DeviceAllocator());
  const Tensor got = Tensor::Empty(DType::kBF16, {tokens, heads, dim}, DeviceAllocator());
  ASSERT_TRUE(RmsNorm(x.view(), w, 1e-6f, f32.view()).ok());
  ASSERT_TRUE(ApplyRope(f32.view(), cos.view(), sin.view(), /*inverse=*/false).ok());
  ASSERT_TRUE(F32ToBf16(f32.view(), want.view()).ok());
  ASSERT_TRUE(RmsNormRope(x.view(), w, 1e-6f, cos.view(), sin.view(), heads, got.view(),
                          RopeRounding::kAfterRotation)
                  .ok());
  const Tensor a = testing::ToHost(got.view()), b = testing::ToHost(want.view());
  EXPECT_EQ(std::memcmp(a.data<float>(), b.data<float>(), sizeof(float) * a.numel()), 0)
      << "tokens " << tokens << " heads " << heads << " dim " << dim << " half " << half;
  // kBeforeRotation on the same f32 x rounds before the rotation: it must differ somewhere here
  // (else this test would not tell the two apart).
  ASSERT_TRUE(RmsNormRope(x.view(), w, 1e-6f, cos.view(), sin.view(), heads, got.view()).ok());
  const Tensor c = testing::ToHost(got.view());
  EXPECT_NE(std::memcmp(c.data<float>(), b.data<float>(), sizeof(float) * c.numel()), 0);
}

// RopeCopy against Copy into f32, ApplyRope on f32 and F32ToBf16, bit for bit, both directions:
// 17 tokens x 3 heads of 72 (rope from column 56) and 5 x 16 x 512 (the training forward's
// attention output); head_dim 70 is refused.
TEST(CudaElementwise, RopeCopyEqualsCopyRopeThenBf16) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  struct Shape {
    int64_t tokens, heads, dim, half;
  };
  for (const Shape& shape : {Shape{17, 3, 72, 8}, Shape{5, 16, 512, 32}}) {
    for (bool inverse : {false, true}) {
      const int64_t t = shape.tokens, h = shape.heads, d = shape.dim, half = shape.half;
      const Tensor x = testing::ToDevice(RandomNormal({t, h, d}, 41, 2.0f), DType::kF32);
      const Tensor cos = testing::ToDevice(RandomNormal({t, half}, 42, 1.0f), DType::kF32);
      const Tensor sin = testing::ToDevice(RandomNormal({t, half}, 43, 1.0f), DType::kF32);
      const Tensor f32 = Tensor::Empty(DType::kF32, {t, h, d}, DeviceAllocator());
      const Tensor want = Tensor::Empty(DType::kBF16, {t, h, d}, DeviceAllocator());
      const Tensor got = Tensor::Empty(DType::kBF16, {t, h, d}, DeviceAllocator());
      ASSERT_TRUE(Copy(x.view(), f32.view()).ok());
      ASSERT_TRUE(ApplyRope(f32.view(), cos.view(), sin.view(), inverse).ok());
      ASSERT_TRUE(F32ToBf16(f32.view(), want.view()).ok());
      ASSERT_TRUE(RopeCopy(x.view(), cos.view(), sin.view(), inverse, got.view()).ok());
      const Tensor a = testing::ToHost(got.view()), b = testing::ToHost(want.view());
      EXPECT_EQ(std::memcmp(a.data<float>(), b.data<float>(), sizeof(float) * a.numel()), 0)
          << "dim " << d << (inverse ? " inverse" : "");
      // And into f32: the rotated values themselves.
      const Tensor got32 = Tensor::Empty(DType::kF32, {t, h, d}, DeviceAllocator());
      ASSERT_TRUE(RopeCopy(x.view(), cos.view(), sin.view(), inverse, got32.view()).ok());
      const Tensor c = testing::ToHost(got32.view()), e = testing::ToHost(f32.view());
      EXPECT_EQ(std::memcmp(c.data<float>(), e.data<float>(), sizeof(float) * c.numel()), 0);
    }
  }
  const Tensor x = testing::ToDevice(RandomNormal({3, 2, 70}, 44, 1.0f), DType::kF32);
  const Tensor cos = testing::ToDevice(RandomNormal({3, 8}, 45, 1.0f), DType::kF32);
  const Tensor out = Tensor::Empty(DType::kBF16, {3, 2, 70}, DeviceAllocator());
  EXPECT_FALSE(RopeCopy(x.view(), cos.view(), cos.view(), false, out.view()).ok());
}

TEST(CudaElementwise, RmsNormRopeAfterRotationEqualsF32ThenCopy) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckRmsNormRopeAfterRotation(17, 3, 72, 8, /*weighted=*/false, 11);
  CheckRmsNormRopeAfterRotation(17, 16, 512, 32, /*weighted=*/false, 12);
  CheckRmsNormRopeAfterRotation(17, 1, 512, 32, /*weighted=*/true, 13);
  const Tensor x = testing::ToDevice(RandomNormal({6, 70}, 14, 1.0f), DType::kF32);
  const Tensor cos = testing::ToDevice(RandomNormal({3, 8}, 15, 1.0f), DType::kF32);
  const Tensor out = Tensor::Empty(DType::kBF16, {6, 70}, DeviceAllocator());
  EXPECT_FALSE(RmsNormRope(x.view(), core::TensorView(), 1e-6f, cos.view(), cos.view(), 2,
                           out.view(), RopeRounding::kAfterRotation)
                   .ok());
}

TEST(CudaElementwise, SwiGluClampBf16) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t rows = 17, inter = 333;
  const Tensor gate = testing::RoundToBf16(RandomNormal({rows, inter}, 9, 8.0f));
  const Tensor up = testing::RoundToBf16(RandomNormal({rows, inter}, 10, 8.0f));
  for (float limit : {10.0f, 0.0f}) {
    Tensor want = Tensor::Empty(DType::kF32, {rows, inter});
    cpu::SwiGluClampRef(gate.data<float>(), up.data<float>(), limit, want.data<float>(),
                        rows * inter);
    const Tensor dg = testing::ToDevice(gate, DType::kBF16);
    const Tensor du = testing::ToDevice(up, DType::kBF16);
    const Tensor dout = Tensor::Empty(DType::kBF16, {rows, inter}, DeviceAllocator());
    ASSERT_TRUE(SwiGluClamp(dg.view(), du.view(), limit, dout.view()).ok());
    EXPECT_TRUE(testing::CloseAndReport(limit > 0 ? "swiglu clamp 10" : "swiglu no clamp",
                                        testing::ToHost(dout.view()).view(), want.view(),
                                        kBf16Out));
  }
}

// With a copy: out as without one and the copy its bf16 rounding, bit for bit (the vectorised
// path at 336 columns, the scalar one at 333); a copy that is not bf16 of out's shape is rejected.
TEST(CudaElementwise, SwiGluClampWritesABf16CopyOfItsOutput) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (const int64_t inter : {336, 333}) {
    const int64_t rows = 9;
    const Tensor gate = testing::ToDevice(RandomNormal({rows, inter}, 21, 8.0f), DType::kF32);
    const Tensor up = testing::ToDevice(RandomNormal({rows, inter}, 22, 8.0f), DType::kF32);
    const Tensor alone = Tensor::Empty(DType::kF32, {rows, inter}, DeviceAllocator());
    const Tensor out = Tensor::Empty(DType::kF32, {rows, inter}, DeviceAllocator());
    const Tensor copy = Tensor::Empty(DType::kBF16, {rows, inter}, DeviceAllocator());
    ASSERT_TRUE(SwiGluClamp(gate.view(), up.view(), 10.0f, alone.view()).ok());
    ASSERT_TRUE(SwiGluClamp(gate.view(), up.view(), 10.0f, out.view(), copy.view()).ok());
    const std::vector<float> want = testing::ToHost(alone.view()).ToFloatVector();
    const std::vector<float> got = testing::ToHost(out.view()).ToFloatVector();
    const std::vector<float> want_copy =
        testing::RoundToBf16(testing::ToHost(alone.view())).ToFloatVector();
    const std::vector<float> got_copy = testing::ToHost(copy.view()).ToFloatVector();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i], want[i]) << inter << " " << i;
      ASSERT_EQ(got_copy[i], want_copy[i]) << inter << " " << i;
    }
    const Tensor wrong = Tensor::Empty(DType::kF32, {rows, inter}, DeviceAllocator());
    EXPECT_FALSE(SwiGluClamp(gate.view(), up.view(), 10.0f, out.view(), wrong.view()).ok());
    EXPECT_FALSE(
        SwiGluClamp(gate.view(), up.view(), 10.0f, out.view(), copy.view().Slice(0, 0, rows - 1))
            .ok());
  }
}

// H = 77 copies a channel a thread, H = 64 eight (16-byte rows); bf16 and f32 tables and outputs.
TEST(CudaElementwise, EmbedStreamsCopiesRowsIntoEveryStream) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t vocab = 29, n = 4, tokens = 17;
  for (const int64_t hidden : {int64_t{77}, int64_t{64}}) {
    for (const DType table_dtype : {DType::kBF16, DType::kF32}) {
      for (const DType out_dtype : {DType::kF32, DType::kBF16}) {
        const Tensor table = testing::RoundToBf16(RandomNormal({vocab, hidden}, 12));
        Tensor ids = Tensor::Empty(DType::kI32, {tokens});
        for (int64_t i = 0; i < tokens; ++i) {
          ids.data<int32_t>()[i] = static_cast<int32_t>((i * 7 + 3) % vocab);
        }
        Tensor want = Tensor::Empty(DType::kF32, {tokens, n, hidden});
        for (int64_t i = 0; i < tokens; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            for (int64_t h = 0; h < hidden; ++h) {
              want.data<float>()[(i * n + j) * hidden + h] =
                  table.data<float>()[ids.data<int32_t>()[i] * hidden + h];
            }
          }
        }
        const Tensor d_table = testing::ToDevice(table, table_dtype);
        const Tensor d_ids = testing::ToDevice(ids, DType::kI32);
        const Tensor out = Tensor::Empty(out_dtype, {tokens, n, hidden}, DeviceAllocator());
        ASSERT_TRUE(EmbedStreams(d_table.view(), d_ids.view(), out.view()).ok());
        // The table's values are bf16, so every copy is exact in either dtype.
        EXPECT_TRUE(testing::CloseAndReport(
            absl::StrFormat("embed streams H=%d table %s out %s", hidden,
                            table_dtype == DType::kBF16 ? "bf16" : "f32",
                            out_dtype == DType::kBF16 ? "bf16" : "f32"),
            testing::ToHost(out.view()).view(), want.view(), {.atol = 0, .rtol = 0}));
      }
    }
  }
}

TEST(CudaElementwise, AddPositionBiasPerSequenceSlot) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t seq_len = 17, batch = 2, width = 45, ratio = 4;
  const Tensor x = RandomNormal({batch * seq_len, width}, 13);
  const Tensor bias = RandomNormal({ratio, width}, 14);
  Tensor want = Tensor::CopyOf(x.view());
  for (int64_t r = 0; r < batch * seq_len; ++r) {
    for (int64_t c = 0; c < width; ++c) {
      want.data<float>()[r * width + c] += bias.data<float>()[((r % seq_len) % ratio) * width + c];
    }
  }
  const Tensor dx = testing::ToDevice(x, DType::kF32);
  const Tensor d_bias = testing::ToDevice(bias, DType::kF32);
  ASSERT_TRUE(AddPositionBias(dx.view(), d_bias.view(), seq_len).ok());
  EXPECT_TRUE(testing::CloseAndReport("position bias", testing::ToHost(dx.view()).view(),
                                      want.view(), {.atol = 0, .rtol = 0}));
}

TEST(CudaElementwise, RejectsHostViews) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor host = Tensor::Empty(DType::kF32, {2, 8});
  EXPECT_FALSE(RmsNorm(host.view(), core::TensorView(), 1e-6f, host.view()).ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
