// Element types v4rl stores, and exact scalar conversions between them and fp32.
//
// Conversion rules (tests/core/dtype_test.cc has the hand-computed tables):
//  - bf16: round to nearest, ties to even; NaN stays NaN (quiet, sign kept); overflow rounds to Inf
//    exactly as IEEE rounding does.
//  - f16 (IEEE half): round to nearest even, subnormals kept, overflow to Inf, NaN kept.
//  - fp8 e4m3fn (no Inf; S.1111.111 is NaN; max finite 448): round to nearest even. The plain
//    conversion follows PyTorch's cast: |x| that rounds past 448 (|x| > 464), Inf and NaN give NaN.
//    The saturating conversion clamps finite values and Inf to +-448 first (the official inference
//    code's quantisers clamp before casting); NaN still gives NaN.
//  - fp4 e2m1 (values 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives; no Inf, no NaN): round to
//    nearest even, saturating at +-6; +-Inf gives +-6; NaN has no encoding and gives +0.
//    Packed two per byte: element 2c in the low nibble, element 2c+1 in the high nibble.
//  - ue8m0 (unsigned power-of-two scale, byte e means 2^(e-127), 0xFF is NaN): decoding is exact;
//    encoding rounds up to the next power of two (the `2^ceil(log2(s))` rule of the official
//    quantisers), clamped to [2^-127, 2^127]; NaN, Inf, zero and negative inputs give 0xFF / 0x00
//    as documented on Ue8m0FromFloatCeil.
// Thread-safe: all functions are pure.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace v4rl::core {

enum class DType : uint8_t {
  kF64,
  kF32,
  kF16,
  kBF16,
  kF8E4M3,  // float8_e4m3fn
  kF8E8M0,  // ue8m0 scale byte
  kF4E2M1,  // packed two per byte; shapes count fp4 elements
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
};

// Bits per element (4 for kF4E2M1).
int DTypeBits(DType dtype);
// Bytes holding `num_elements` elements (rounded up for fp4).
int64_t DTypeBytes(DType dtype, int64_t num_elements);
// Short name used in messages and by `v4rl inspect` ("f32", "bf16", "f8_e4m3", ...).
const char* DTypeName(DType dtype);
bool IsFloatingPoint(DType dtype);
// The safetensors header spelling ("F32", "BF16", "F8_E4M3", "F8_E8M0", "I8", ...).
const char* SafetensorsDTypeName(DType dtype);
// Parses a safetensors dtype string; unknown strings give InvalidArgument naming the string.
absl::StatusOr<DType> DTypeFromSafetensorsName(std::string_view name);

// ---- scalar conversions ----

inline uint32_t FloatBits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}
inline float BitsToFloat(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

inline float Bf16ToFloat(uint16_t bf16) { return BitsToFloat(static_cast<uint32_t>(bf16) << 16); }
inline uint16_t FloatToBf16(float x) {
  const uint32_t bits = FloatBits(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}
// Rounds x to the nearest bf16 value and returns it as float.
inline float RoundToBf16(float x) { return Bf16ToFloat(FloatToBf16(x)); }

float F16ToFloat(uint16_t f16);
uint16_t FloatToF16(float x);

float F8E4M3ToFloat(uint8_t code);
uint8_t FloatToF8E4M3(float x);            // PyTorch cast semantics (overflow -> NaN)
uint8_t FloatToF8E4M3Saturating(float x);  // clamp to +-448 first

float F4E2M1ToFloat(uint8_t code);  // low 4 bits used
uint8_t FloatToF4E2M1(float x);     // returns a 4-bit code

float Ue8m0ToFloat(uint8_t code);
// Smallest power of two >= x for finite x > 0, as a ue8m0 byte. x <= 2^-127 gives 0x00,
// x > 2^127 gives 0xFE (2^127); x <= 0 gives 0x00; NaN and +Inf give 0xFF (NaN).
uint8_t Ue8m0FromFloatCeil(float x);

// Reads element `index` of a contiguous buffer of `dtype` as float (fp4: nibble order as above;
// integers converted by value). Used by loaders and tests, not by hot loops.
float LoadAsFloat(const void* data, DType dtype, int64_t index);

}  // namespace v4rl::core
