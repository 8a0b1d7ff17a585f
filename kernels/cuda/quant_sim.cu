#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_sim.h"

namespace v4rl::kernels::cuda {
namespace {

// 2^ceil(log2(v)) for v > 0, as core::Ue8m0FromFloatCeil then Ue8m0ToFloat (exponent in
// [-127, 127]; NaN for an infinite or NaN v, as the ue8m0 NaN code).
__device__ float Pow2Ceil(float v) {
  if (!(v <= 3.402823466e38f)) return __int_as_float(0x7fc00000);
  if (v <= ldexpf(1.0f, -127)) return ldexpf(1.0f, -127);
  int exponent;
  const float fraction = frexpf(v, &exponent);
  const int power = fraction == 0.5f ? exponent - 1 : exponent;
  return ldexpf(1.0f, power > 127 ? 127 : power);
}

// Nearest E4M3 value (ties to even) of |x| <= 448, as core::FloatToF8E4M3 + F8E4M3ToFloat.
__device__ float RoundE4M3(float x) {
  if (x != x) return x;  // NaN stays NaN
  const float magnitude = fabsf(x);
  float value;
  if (magnitude < ldexpf(1.0f, -6)) {
    value = rintf(magnitude * 512.0f) / 512.0f;
  } else {
    int exponent;
    const float fraction = frexpf(magnitude, &exponent);
    const float steps = rintf((2.0f * fraction - 1.0f) * 8.0f);
    value = ldexpf(1.0f + steps / 8.0f, exponent - 1);
  }
  return copysignf(value, x);
}

// Nearest E2M1 value (ties to the even code) of |x| <= 6, as core::FloatToF4E2M1 + F4E2M1ToFloat.
__device__ float RoundE2M1(float x) {
  constexpr float kValues[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  if (x != x) return 0.0f;  // NaN encodes as code 0
  const float magnitude = fabsf(x);
  float value = kValues[7];
  for (int code = 0; code < 7; ++code) {
    const float midpoint = 0.5f * (kValues[code] + kValues[code + 1]);
    if (magnitude < midpoint || (magnitude == midpoint && code % 2 == 0)) {
      value = kValues[code];
      break;
    }
  }
  return copysignf(value, x);
}

struct QuantParams {
  void* x;
  int64_t rows, ld, width, block, blocks_per_row;
  bool bf16, fp8;
};

constexpr int kWarpsPerBlock = 8;

// One warp per (row, block of columns).
__global__ void BlockQuantDequantKernel(QuantParams p) {
  WaitForPriorKernels();
  const int64_t item = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32;
  if (item >= p.rows * p.blocks_per_row) return;
  const int lane = threadIdx.x % 32;
  const int64_t r = item / p.blocks_per_row, begin = (item % p.blocks_per_row) * p.block;
  const int64_t end = Min64(p.width, begin + p.block);
  const int64_t base = r * p.ld;
  const float max_code = p.fp8 ? 448.0f : 6.0f;
  float amax = p.fp8 ? 1e-4f : 6.0f * ldexpf(1.0f, -126);
  for (int64_t c = begin + lane; c < end; c += 32)
    amax = fmaxf(amax, fabsf(LoadF(p.x, p.bf16, base + c)));
  amax = WarpMax(amax);
  const float scale = Pow2Ceil(amax / max_code);
  for (int64_t c = begin + lane; c < end; c += 32) {
    const float v = LoadF(p.x, p.bf16, base + c) / scale;
    const float scaled = v < -max_code ? -max_code : (v > max_code ? max_code : v);  // NaN kept
    StoreF(p.x, p.bf16, base + c, (p.fp8 ? RoundE4M3(scaled) : RoundE2M1(scaled)) * scale);
  }
}

struct HadamardParams {
  void* x;
  int64_t rows, ld;
  int n;
  float norm;
  bool bf16;
};

// One warp per row; lane l holds columns 4l .. 4l + 3 (lanes past n / 4 idle). Stages of width 1
// and 2 inside the lane, 4 .. n / 2 across lanes (the lower lane keeps a + b, the upper a - b),
// as HadamardRef.
__global__ void HadamardKernel(HadamardParams p) {
  WaitForPriorKernels();
  const int64_t r = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= p.rows) return;
  const int lane = threadIdx.x % 32;
  const bool active = 4 * lane < p.n;
  const int64_t base = r * p.ld + 4 * lane;
  float v[4] = {0, 0, 0, 0};
  for (int i = 0; i < 4 && active; ++i) v[i] = LoadF(p.x, p.bf16, base + i);
  for (int len = 1; len < 4; len *= 2) {
    for (int i = 0; i < 4; ++i) {
      if ((i & len) == 0) {
        const float a = v[i], b = v[i + len];
        v[i] = a + b;
        v[i + len] = a - b;
      }
    }
  }
  for (int len = 4; len < p.n; len *= 2) {
    const int partner_bit = len / 4;
    for (int i = 0; i < 4; ++i) {
      const float other = __shfl_xor_sync(0xffffffffu, v[i], partner_bit);
      v[i] = (lane & partner_bit) == 0 ? v[i] + other : other - v[i];
    }
  }
  for (int i = 0; i < 4 && active; ++i) StoreF(p.x, p.bf16, base + i, v[i] * p.norm);
}

}  // namespace

absl::Status BlockQuantDequant(const core::TensorView& x, int64_t width, int64_t block,
                               SimFormat format) {
  const char* op = "cuda::BlockQuantDequant";
  RowView v{};
  if (absl::Status s = AsRows(op, "x", x, &v); !s.ok()) return s;
  const int64_t rows = v.rows, cols = v.cols, ld = v.ld;
  if (absl::Status s = CheckArg(block >= 1 && block <= 128 && width >= 0 && width <= cols, op,
                                "needs 1 <= block <= 128 and 0 <= width <= the row length");
      !s.ok()) {
    return s;
  }
  const int64_t blocks_per_row = (width + block - 1) / block;
  const int64_t items = rows * blocks_per_row;
  if (items == 0) return absl::OkStatus();
  const QuantParams p{x.data, rows,           ld,        width,
                      block,  blocks_per_row, IsBf16(x), format == SimFormat::kFp8E4M3};
  LaunchKernel(BlockQuantDequantKernel,
               static_cast<unsigned>((items + kWarpsPerBlock - 1) / kWarpsPerBlock),
               32 * kWarpsPerBlock, 0, p);
  return LaunchStatus(op);
}

absl::Status Hadamard(const core::TensorView& x) {
  const char* op = "cuda::Hadamard";
  RowView v{};
  if (absl::Status s = AsRows(op, "x", x, &v); !s.ok()) return s;
  const int64_t rows = v.rows, cols = v.cols, ld = v.ld;
  if (absl::Status s = CheckArg(cols >= 4 && cols <= 128 && (cols & (cols - 1)) == 0, op,
                                "rows must have a power of two in [4, 128] columns");
      !s.ok()) {
    return s;
  }
  if (rows == 0) return absl::OkStatus();
  // The same float as HadamardRef's 1 / sqrt(n).
  const HadamardParams p{
      x.data,   rows, ld, static_cast<int>(cols), 1.0f / std::sqrt(static_cast<float>(cols)),
      IsBf16(x)};
  LaunchKernel(HadamardKernel, static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock),
               32 * kWarpsPerBlock, 0, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
