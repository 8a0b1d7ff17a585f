// Conversion tables for bf16, f16, fp8 e4m3fn, fp4 e2m1 and ue8m0, computed by hand from the
// formats' definitions: subnormals, max finite, NaN/Inf/overflow and rounding ties.
#include "core/dtype.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace v4rl::core {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3F808000)), 0x3F80);  // tie, even stays
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3F818000)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3F808001)), 0x3F81);  // just above tie
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3F807FFF)), 0x3F80);  // just below tie
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
}

TEST(Bf16, SubnormalsMaxFiniteAndOverflow) {
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x00010000)), 0x0001);  // smallest bf16 subnormal
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x00008000)), 0x0000);  // tie to even (zero)
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x00018000)), 0x0002);  // tie to even (up)
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x7F7F0000)), 0x7F7F);  // max finite bf16
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to Inf
  EXPECT_EQ(FloatToBf16(kInf), 0x7F80);
  EXPECT_EQ(FloatToBf16(-kInf), 0xFF80);
  EXPECT_FLOAT_EQ(Bf16ToFloat(0x7F7F), 3.3895313892515355e38f);
}

TEST(Bf16, NaNStaysNaN) {
  EXPECT_EQ(FloatToBf16(kNaN), 0x7FC0);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x7F800001)), 0x7FC0);  // signalling NaN, low payload
  EXPECT_EQ(FloatToBf16(BitsToFloat(0xFF800001)), 0xFFC0);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7FC0)));
}

TEST(F16, Table) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3C00);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7BFF);  // max finite
  EXPECT_EQ(FloatToF16(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7C00);  // tie with odd max -> Inf
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even
  EXPECT_EQ(FloatToF16(3 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie, even
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(FloatToF16(-kInf), 0xFC00);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(kNaN))));
  for (uint32_t code = 0; code < 0x10000; ++code) {
    if ((code & 0x7C00) == 0x7C00 && (code & 0x3FF)) continue;  // NaNs
    ASSERT_EQ(FloatToF16(F16ToFloat(static_cast<uint16_t>(code))), code) << code;
  }
}

TEST(F8E4M3, DecodeTable) {
  EXPECT_EQ(F8E4M3ToFloat(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(F8E4M3ToFloat(0x80)));
  EXPECT_EQ(F8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));   // smallest subnormal
  EXPECT_EQ(F8E4M3ToFloat(0x07), 7 * std::ldexp(1.0f, -9));  // largest subnormal
  EXPECT_EQ(F8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));   // smallest normal
  EXPECT_EQ(F8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x78), 256.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x7E), 448.0f);  // max finite
  EXPECT_EQ(F8E4M3ToFloat(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0xFF)));
}

TEST(F8E4M3, EncodeRoundsToNearestEven) {
  EXPECT_EQ(FloatToF8E4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToF8E4M3(1.0625f), 0x38);  // tie between 1 and 1.125
  EXPECT_EQ(FloatToF8E4M3(1.1875f), 0x3A);  // tie between 1.125 and 1.25
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.0f, -10)), 0x00);      // tie between 0 and 2^-9
  EXPECT_EQ(FloatToF8E4M3(3 * std::ldexp(1.0f, -10)), 0x02);  // tie between 2^-9 and 2^-8
  EXPECT_EQ(FloatToF8E4M3(15 * std::ldexp(1.0f, -10)), 0x08);  // rounds into the normals
  EXPECT_EQ(FloatToF8E4M3(-0.0f), 0x80);
  EXPECT_EQ(FloatToF8E4M3(-3.0f), 0xC0 | 0x04);
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;
    ASSERT_EQ(FloatToF8E4M3(F8E4M3ToFloat(static_cast<uint8_t>(code))), code) << code;
  }
}

TEST(F8E4M3, OverflowFollowsPyTorchAndSaturatingClamps) {
  EXPECT_EQ(FloatToF8E4M3(448.0f), 0x7E);
  EXPECT_EQ(FloatToF8E4M3(464.0f), 0x7E);  // tie rounds to even 448
  EXPECT_EQ(FloatToF8E4M3(465.0f), 0x7F);  // would round to 480: NaN
  EXPECT_EQ(FloatToF8E4M3(-1000.0f), 0xFF);
  EXPECT_EQ(FloatToF8E4M3(kInf), 0x7F);
  EXPECT_EQ(FloatToF8E4M3(kNaN), 0x7F);
  EXPECT_EQ(FloatToF8E4M3Saturating(465.0f), 0x7E);
  EXPECT_EQ(FloatToF8E4M3Saturating(-1000.0f), 0xFE);
  EXPECT_EQ(FloatToF8E4M3Saturating(kInf), 0x7E);
  EXPECT_EQ(FloatToF8E4M3Saturating(kNaN), 0x7F);
}

TEST(F4E2M1, DecodeTable) {
  const float expected[16] = {0, .5, 1, 1.5, 2, 3, 4, 6, -0.0f, -.5, -1, -1.5, -2, -3, -4, -6};
  for (int code = 0; code < 16; ++code) {
    EXPECT_EQ(F4E2M1ToFloat(static_cast<uint8_t>(code)), expected[code]) << code;
  }
  EXPECT_TRUE(std::signbit(F4E2M1ToFloat(0x8)));
}

TEST(F4E2M1, EncodeRoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(FloatToF4E2M1(0.25f), 0x0);  // tie between 0 and 0.5
  EXPECT_EQ(FloatToF4E2M1(0.26f), 0x1);
  EXPECT_EQ(FloatToF4E2M1(0.75f), 0x2);  // tie between 0.5 and 1
  EXPECT_EQ(FloatToF4E2M1(1.25f), 0x2);  // tie between 1 and 1.5
  EXPECT_EQ(FloatToF4E2M1(1.75f), 0x4);  // tie between 1.5 and 2
  EXPECT_EQ(FloatToF4E2M1(2.5f), 0x4);   // tie between 2 and 3
  EXPECT_EQ(FloatToF4E2M1(3.5f), 0x6);   // tie between 3 and 4
  EXPECT_EQ(FloatToF4E2M1(5.0f), 0x6);   // tie between 4 and 6
  EXPECT_EQ(FloatToF4E2M1(5.1f), 0x7);
  EXPECT_EQ(FloatToF4E2M1(6.0f), 0x7);
  EXPECT_EQ(FloatToF4E2M1(100.0f), 0x7);
  EXPECT_EQ(FloatToF4E2M1(kInf), 0x7);
  EXPECT_EQ(FloatToF4E2M1(-kInf), 0xF);
  EXPECT_EQ(FloatToF4E2M1(-0.75f), 0xA);
  EXPECT_EQ(FloatToF4E2M1(-0.1f), 0x8);
  EXPECT_EQ(FloatToF4E2M1(kNaN), 0x0);
  for (int code = 0; code < 16; ++code) {
    EXPECT_EQ(FloatToF4E2M1(F4E2M1ToFloat(static_cast<uint8_t>(code))), code);
  }
}

TEST(F4E2M1, PackedNibbleOrderLowFirst) {
  const uint8_t packed[2] = {0x21, 0xF7};  // elements: 0.5, 1, 6, -6
  EXPECT_EQ(LoadAsFloat(packed, DType::kF4E2M1, 0), 0.5f);
  EXPECT_EQ(LoadAsFloat(packed, DType::kF4E2M1, 1), 1.0f);
  EXPECT_EQ(LoadAsFloat(packed, DType::kF4E2M1, 2), 6.0f);
  EXPECT_EQ(LoadAsFloat(packed, DType::kF4E2M1, 3), -6.0f);
  EXPECT_EQ(DTypeBytes(DType::kF4E2M1, 3), 2);
}

TEST(Ue8m0, DecodeAndCeilEncode) {
  EXPECT_EQ(Ue8m0ToFloat(127), 1.0f);
  EXPECT_EQ(Ue8m0ToFloat(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(Ue8m0ToFloat(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(Ue8m0ToFloat(255)));
  EXPECT_EQ(Ue8m0FromFloatCeil(1.0f), 127);
  EXPECT_EQ(Ue8m0FromFloatCeil(1.5f), 128);
  EXPECT_EQ(Ue8m0FromFloatCeil(0.75f), 127);
  EXPECT_EQ(Ue8m0FromFloatCeil(448.0f), 136);  // 2^9
  EXPECT_EQ(Ue8m0FromFloatCeil(std::ldexp(1.0f, -127)), 0);
  EXPECT_EQ(Ue8m0FromFloatCeil(std::ldexp(1.0f, -126)), 1);
  EXPECT_EQ(Ue8m0FromFloatCeil(1e-45f), 0);
  EXPECT_EQ(Ue8m0FromFloatCeil(0.0f), 0);
  EXPECT_EQ(Ue8m0FromFloatCeil(-1.0f), 0);
  EXPECT_EQ(Ue8m0FromFloatCeil(std::numeric_limits<float>::max()), 254);
  EXPECT_EQ(Ue8m0FromFloatCeil(kInf), 255);
  EXPECT_EQ(Ue8m0FromFloatCeil(kNaN), 255);
}

TEST(DTypeNames, SafetensorsRoundTripAndUnknown) {
  for (DType dtype : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3,
                      DType::kF8E8M0, DType::kF4E2M1, DType::kI64, DType::kI32, DType::kI16,
                      DType::kI8, DType::kU8, DType::kBool}) {
    auto parsed = DTypeFromSafetensorsName(SafetensorsDTypeName(dtype));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, dtype);
  }
  auto unknown = DTypeFromSafetensorsName("F7");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("\"F7\""), std::string::npos);
}

}  // namespace
}  // namespace v4rl::core
