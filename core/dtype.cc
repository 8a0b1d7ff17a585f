#include "core/dtype.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "core/logging.h"

namespace v4rl::core {
namespace {

struct DTypeInfo {
  DType dtype;
  int bits;
  const char* name;
  const char* safetensors_name;
  bool floating;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, 64, "f64", "F64", true},         {DType::kF32, 32, "f32", "F32", true},
    {DType::kF16, 16, "f16", "F16", true},         {DType::kBF16, 16, "bf16", "BF16", true},
    {DType::kF8E4M3, 8, "f8_e4m3", "F8_E4M3", true}, {DType::kF8E8M0, 8, "f8_e8m0", "F8_E8M0", true},
    {DType::kF4E2M1, 4, "f4_e2m1", "F4", true},    {DType::kI64, 64, "i64", "I64", false},
    {DType::kI32, 32, "i32", "I32", false},        {DType::kI16, 16, "i16", "I16", false},
    {DType::kI8, 8, "i8", "I8", false},            {DType::kU8, 8, "u8", "U8", false},
    {DType::kBool, 8, "bool", "BOOL", false},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  V4RL_CHECK(false) << "unknown dtype " << static_cast<int>(dtype);
  return kDTypes[0];
}

// E2M1 magnitudes by 3-bit code.
constexpr float kE2M1Values[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

}  // namespace

int DTypeBits(DType dtype) { return Info(dtype).bits; }
int64_t DTypeBytes(DType dtype, int64_t num_elements) {
  return (num_elements * DTypeBits(dtype) + 7) / 8;
}
const char* DTypeName(DType dtype) { return Info(dtype).name; }
bool IsFloatingPoint(DType dtype) { return Info(dtype).floating; }
const char* SafetensorsDTypeName(DType dtype) { return Info(dtype).safetensors_name; }

absl::StatusOr<DType> DTypeFromSafetensorsName(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.safetensors_name) return info.dtype;
  }
  // Older writers spell the scale dtype without the F8_ prefix.
  if (name == "E8M0") return DType::kF8E8M0;
  return absl::InvalidArgumentError(absl::StrFormat(
      "unknown dtype \"%s\" (expected one of F64 F32 F16 BF16 F8_E4M3 F8_E8M0 F4 I64 I32 I16 I8 "
      "U8 BOOL)",
      std::string(name)));
}

float F16ToFloat(uint16_t f16) {
  const uint32_t sign = static_cast<uint32_t>(f16 & 0x8000u) << 16;
  const uint32_t exponent = (f16 >> 10) & 0x1fu;
  const uint32_t mantissa = f16 & 0x3ffu;
  if (exponent == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return BitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t FloatToF16(float x) {
  const uint32_t bits = FloatBits(x);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((abs_bits >> 13) & 0x1ffu);
  if (abs_bits >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: Inf
  if (abs_bits < 0x38800000u) {
    // Result is subnormal (or zero) in f16: round mantissa * 2^24 to nearest even integer.
    const float scaled = BitsToFloat(abs_bits) * 16777216.0f;  // exact: power-of-two scaling
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  // Normal: rebias exponent, round 13 dropped bits to nearest even (carry may bump the exponent).
  const uint32_t rebased = abs_bits - (112u << 23);
  const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return sign | static_cast<uint16_t>(rounded >> 13);
}

float F8E4M3ToFloat(uint8_t code) {
  const bool negative = code & 0x80u;
  const int exponent = (code >> 3) & 0xf;
  const int mantissa = code & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m/8 * 2^-6
  } else {
    magnitude = std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
  }
  return negative ? -magnitude : magnitude;
}

uint8_t FloatToF8E4M3(float x) {
  const uint8_t sign = (FloatBits(x) >> 24) & 0x80u;
  const float magnitude = std::fabs(x);
  if (std::isnan(x)) return sign | 0x7fu;
  // 464 is the midpoint between 448 (max finite) and 480 (the NaN code's would-be value): ties go
  // to the even mantissa 448; anything larger is NaN, as in PyTorch's cast.
  if (magnitude > 464.0f) return sign | 0x7fu;
  if (magnitude < std::ldexp(1.0f, -6)) {
    // Subnormal range: value = m * 2^-9, m in [0, 8]; m == 8 is the smallest normal (code 0x08).
    const float m = std::nearbyint(magnitude * 512.0f);
    return sign | static_cast<uint8_t>(m);
  }
  int exponent;
  const float fraction = std::frexp(magnitude, &exponent);  // magnitude = fraction * 2^exponent
  // fraction in [0.5, 1): significand 1.mmm = 2*fraction; mantissa steps of 1/8.
  const float steps = std::nearbyint((2.0f * fraction - 1.0f) * 8.0f);
  int biased = exponent - 1 + 7;
  int mantissa = static_cast<int>(steps);
  if (mantissa == 8) {
    mantissa = 0;
    ++biased;
  }
  return sign | static_cast<uint8_t>((biased << 3) | mantissa);
}

uint8_t FloatToF8E4M3Saturating(float x) {
  if (std::isnan(x)) return FloatToF8E4M3(x);
  return FloatToF8E4M3(std::fmin(std::fmax(x, -448.0f), 448.0f));
}

float F4E2M1ToFloat(uint8_t code) {
  const float magnitude = kE2M1Values[code & 0x7u];
  return (code & 0x8u) ? -magnitude : magnitude;
}

uint8_t FloatToF4E2M1(float x) {
  if (std::isnan(x)) return 0;
  const uint8_t sign = std::signbit(x) ? 0x8u : 0x0u;
  const float magnitude = std::fabs(x);
  // Round to nearest; on an exact midpoint pick the even code (codes are ordered by value).
  uint8_t best = 7;
  for (uint8_t code = 0; code < 7; ++code) {
    const float midpoint = 0.5f * (kE2M1Values[code] + kE2M1Values[code + 1]);
    if (magnitude < midpoint || (magnitude == midpoint && code % 2 == 0)) {
      best = code;
      break;
    }
  }
  return sign | best;
}

float Ue8m0ToFloat(uint8_t code) {
  if (code == 0xffu) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(code) - 127);
}

uint8_t Ue8m0FromFloatCeil(float x) {
  if (std::isnan(x) || x == std::numeric_limits<float>::infinity()) return 0xffu;
  if (x <= std::ldexp(1.0f, -127)) return 0x00u;
  int exponent;
  const float fraction = std::frexp(x, &exponent);  // x = fraction * 2^exponent, fraction in [.5,1)
  // Exact powers of two (fraction 0.5) keep their exponent; anything else rounds up.
  const int power = fraction == 0.5f ? exponent - 1 : exponent;
  if (power > 127) return 0xfeu;
  return static_cast<uint8_t>(power + 127);
}

float LoadAsFloat(const void* data, DType dtype, int64_t index) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  auto load = [&](auto tag) {
    decltype(tag) value;
    std::memcpy(&value, bytes + index * sizeof(value), sizeof(value));
    return value;
  };
  switch (dtype) {
    case DType::kF64: return static_cast<float>(load(double{}));
    case DType::kF32: return load(float{});
    case DType::kF16: return F16ToFloat(load(uint16_t{}));
    case DType::kBF16: return Bf16ToFloat(load(uint16_t{}));
    case DType::kF8E4M3: return F8E4M3ToFloat(bytes[index]);
    case DType::kF8E8M0: return Ue8m0ToFloat(bytes[index]);
    case DType::kF4E2M1: {
      const uint8_t byte = bytes[index / 2];
      return F4E2M1ToFloat(index % 2 == 0 ? (byte & 0xfu) : (byte >> 4));
    }
    case DType::kI64: return static_cast<float>(load(int64_t{}));
    case DType::kI32: return static_cast<float>(load(int32_t{}));
    case DType::kI16: return static_cast<float>(load(int16_t{}));
    case DType::kI8: return static_cast<float>(static_cast<int8_t>(bytes[index]));
    case DType::kU8: return static_cast<float>(bytes[index]);
    case DType::kBool: return bytes[index] ? 1.0f : 0.0f;
  }
  return 0.0f;
}

}  // namespace v4rl::core
