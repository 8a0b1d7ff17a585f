// The GPU FP8/FP4 simulation (kernels/cuda/quant_sim.h) against the CPU references
// (kernels/cpu/quant_sim.h): bit for bit, on odd row counts, partial last blocks, strided rows,
// f32 and bf16 storage (gpu label; skips without a device).
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quant_sim.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/quant_sim.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;

// Elements of `got` that differ from `want` in their bits, NaN matching any NaN (both f32 host
// tensors).
int64_t Mismatches(const Tensor& got, const Tensor& want, const std::string& tag) {
  int64_t bad = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const float g = got.data<float>()[i], w = want.data<float>()[i];
    if (std::isnan(g) && std::isnan(w)) continue;
    if (core::FloatBits(g) != core::FloatBits(w)) {
      if (bad++ < 3) {
        std::printf("%s: element %ld: got %.9g want %.9g\n", tag.c_str(), long(i),
                    got.data<float>()[i], want.data<float>()[i]);
      }
    }
  }
  std::printf("[measured] %s: %ld of %ld elements differ\n", tag.c_str(), long(bad),
              long(want.numel()));
  return bad;
}

TEST(CudaQuantSim, Fp8ActivationBlocksAndKvQatMatchTheCpuBitForBit) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    // Activations: 17 rows of 1000, blocks of 128 over the first 936 (a partial last block).
    // Scales spread over many binades so that blocks take different exponents.
    Tensor x = testing::RandomNormal({17, 1000}, 7, 3.0f);
    for (int64_t i = 0; i < x.numel(); ++i)
      x.data<float>()[i] *= std::ldexp(1.0f, int(i % 97) / 4 - 12);
    if (dtype == DType::kBF16) x = testing::RoundToBf16(x);
    Tensor want = Tensor::CopyOf(x.view());
    cpu::BlockQuantDequantRef(want.data<float>(), 17, 1000, 936, 128, SimFormat::kFp8E4M3);
    const Tensor d = testing::ToDevice(x, dtype);
    ASSERT_TRUE(BlockQuantDequant(d.view(), 936, 128, SimFormat::kFp8E4M3).ok());
    EXPECT_EQ(Mismatches(testing::ToHost(d.view()), want,
                         std::string("fp8 blocks of 128 ") + core::DTypeName(dtype)),
              0);
  }
  // KV QAT on a strided row view: columns [0, 448) of 512-wide rows in blocks of 64, rope dims
  // and the columns outside the view untouched.
  Tensor wide = testing::RandomNormal({17, 600}, 8, 2.0f);
  Tensor want = Tensor::CopyOf(wide.view());
  cpu::BlockQuantDequantRef(want.data<float>() + 40, 17, 600, 448, 64, SimFormat::kFp8E4M3);
  const Tensor d = testing::ToDevice(wide, DType::kF32);
  ASSERT_TRUE(BlockQuantDequant(d.view().Slice(1, 40, 552), 448, 64, SimFormat::kFp8E4M3).ok());
  EXPECT_EQ(Mismatches(testing::ToHost(d.view()), want, "kv qat strided rows"), 0);
}

TEST(CudaQuantSim, IndexerHadamardThenFp4MatchesTheCpuBitForBit) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // 17 tokens x 3 heads of 128 (V4) and of 32 (the test fixtures); f32 storage, so no rounding
  // between the two steps.
  for (int64_t n : {128, 64, 32, 16, 8, 4}) {
    const std::string tag = "n=" + std::to_string(n);
    Tensor x = testing::RandomNormal({17, 3, n}, 9, 1.5f);
    Tensor want = Tensor::CopyOf(x.view());
    cpu::HadamardRef(want.data<float>(), 51, n, n);
    Tensor rotated = Tensor::CopyOf(want.view());
    cpu::BlockQuantDequantRef(want.data<float>(), 51, n, n, 32, SimFormat::kFp4E2M1);
    const Tensor d = testing::ToDevice(x, DType::kF32);
    ASSERT_TRUE(Hadamard(d.view()).ok());
    EXPECT_EQ(Mismatches(testing::ToHost(d.view()), rotated, "hadamard " + tag), 0);
    ASSERT_TRUE(BlockQuantDequant(d.view(), n, 32, SimFormat::kFp4E2M1).ok());
    EXPECT_EQ(Mismatches(testing::ToHost(d.view()), want, "hadamard + fp4 blocks of 32 " + tag), 0);
  }
}

TEST(CudaQuantSim, SpecialValuesAsTheCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // Blocks of 4: all zeros (the amax floor), -0 and a tiny value, a NaN among finite values,
  // an infinity (its block turns NaN), values at the clamp and at E4M3's subnormal edge.
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> values = {0,   0,    0,   0,     -0.0f,      1e-9f,       -1e-7f,     0,
                                     1,   nan,  -2,  3,     inf,        1,           2,          3,
                                     448, -448, 447, 1e-3f, 1.0f / 512, 3.0f / 1024, -1.0f / 64, 5};
  for (SimFormat format : {SimFormat::kFp8E4M3, SimFormat::kFp4E2M1}) {
    Tensor x = Tensor::FromFloats({6, 4}, values);
    Tensor want = Tensor::CopyOf(x.view());
    cpu::BlockQuantDequantRef(want.data<float>(), 6, 4, 4, 4, format);
    const Tensor d = testing::ToDevice(x, DType::kF32);
    ASSERT_TRUE(BlockQuantDequant(d.view(), 4, 4, format).ok());
    EXPECT_EQ(
        Mismatches(testing::ToHost(d.view()), want,
                   format == SimFormat::kFp8E4M3 ? "fp8 special values" : "fp4 special values"),
        0);
  }
}

TEST(CudaQuantSim, RejectsBadBlocksWidthsAndRowLengths) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor d = testing::ToDevice(testing::RandomNormal({4, 64}, 10), DType::kBF16);
  EXPECT_FALSE(BlockQuantDequant(d.view(), 64, 0, SimFormat::kFp8E4M3).ok());
  EXPECT_FALSE(BlockQuantDequant(d.view(), 64, 256, SimFormat::kFp8E4M3).ok());
  EXPECT_FALSE(BlockQuantDequant(d.view(), 65, 64, SimFormat::kFp8E4M3).ok());
  EXPECT_FALSE(Hadamard(d.view().Slice(1, 0, 48)).ok());  // not a power of two
}

}  // namespace
}  // namespace v4rl::kernels::cuda
