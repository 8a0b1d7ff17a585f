// The official V4 quantisation simulation's CPU references (kernels/cpu/quant_sim.h) on values
// worked out by hand: power-of-two block scales, round-to-nearest-even onto E4M3 and E2M1, the
// amax floor, untouched columns past `width`, and the Sylvester-ordered normalised Hadamard.
#include "kernels/cpu/quant_sim.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace v4rl::kernels::cpu {
namespace {

TEST(BlockQuantDequantRef, Fp8RoundsToNearestEvenOnTheE4M3GridAndKeepsTrailingColumns) {
  // amax 448: scale 1. 1.0625 is the midpoint of 1 and 1.125 (even: 1); 3.3 -> 3.25 (step 0.25).
  std::vector<float> row = {1.0625f, 448.0f, -3.3f, 0.0f, 7.7f};
  BlockQuantDequantRef(row.data(), 1, 5, /*width=*/4, /*block=*/4, SimFormat::kFp8E4M3);
  EXPECT_EQ(row, (std::vector<float>{1.0f, 448.0f, -3.25f, 0.0f, 7.7f}));
}

TEST(BlockQuantDequantRef, Fp8ScaleIsThePowerOfTwoAboveAmaxOver448PerBlock) {
  // Block 1: amax 1000 -> 1000 / 448 = 2.23 -> scale 4; 250 rounds to 256 (step 16) -> 1024.
  // Block 2: amax floored at 1e-4 -> scale 2^-22; 1e-9 / 2^-22 = 0.0042 -> subnormal 2 · 2^-9.
  std::vector<float> rows = {1000.0f, 1.0f, 1e-9f, 0.0f};
  BlockQuantDequantRef(rows.data(), 1, 4, 4, /*block=*/2, SimFormat::kFp8E4M3);
  EXPECT_EQ(rows[0], 1024.0f);
  EXPECT_EQ(rows[1], 1.0f);
  EXPECT_EQ(rows[2], std::ldexp(1.0f, -30));
  EXPECT_EQ(rows[3], 0.0f);
}

TEST(BlockQuantDequantRef, Fp4TiesGoToTheEvenCodeAndSignsSurvive) {
  // amax 6: scale 1. 2.5 -> 2 (codes 4 / 5), -0.25 -> -0 (codes 0 / 1), 0.75 -> 1 (codes 1 / 2).
  std::vector<float> row = {2.5f, 6.0f, -0.25f, 0.75f, 12.0f, 1.0f, 0.1f, -3.0f};
  BlockQuantDequantRef(row.data(), 2, 4, 4, 4, SimFormat::kFp4E2M1);
  EXPECT_EQ(row[0], 2.0f);
  EXPECT_EQ(row[1], 6.0f);
  EXPECT_EQ(row[2], 0.0f);
  EXPECT_TRUE(std::signbit(row[2]));
  EXPECT_EQ(row[3], 1.0f);
  // Second row: amax 12 -> scale 2: 12 -> 12, 1 -> 1 (0.5 · 2), 0.1 -> 0, -3 -> -3 (-1.5 · 2).
  EXPECT_EQ(row[4], 12.0f);
  EXPECT_EQ(row[5], 1.0f);
  EXPECT_EQ(row[6], 0.0f);
  EXPECT_EQ(row[7], -3.0f);
}

TEST(HadamardRef, SylvesterOrderNormalisedAndItsOwnInverse) {
  std::vector<float> x = {1, 2, 3, 4};
  HadamardRef(x.data(), 1, 4, 4);
  EXPECT_EQ(x, (std::vector<float>{5, -1, -2, 0}));  // [10, -2, -4, 0] / sqrt(4)
  std::vector<float> row(128), original(128);
  for (int i = 0; i < 128; ++i) original[i] = row[i] = std::sin(0.37f * i) * (1 + i % 5);
  HadamardRef(row.data(), 1, 128, 128);
  HadamardRef(row.data(), 1, 128, 128);
  for (int i = 0; i < 128; ++i) EXPECT_NEAR(row[i], original[i], 1e-5f) << i;
}

}  // namespace
}  // namespace v4rl::kernels::cpu
