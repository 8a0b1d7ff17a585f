#include <algorithm>
#include <string>

#include "absl/strings/str_format.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/rope_table.cuh"

namespace v4rl::kernels::cuda {
namespace {

struct RmsNormParams {
  const void* x;
  const void* weight;  // nullptr: unweighted
  void* out;
  int64_t rows, dim, ldx, ldo;
  float eps;
  bool x_bf16, w_bf16, out_bf16;
  bool vec;  // 8-wide accesses (Vec8Ok on x, out and the weight)
  // RmsNormRope (vec only): rows r·heads .. + heads - 1 rotate their trailing 2·half channels
  // (starting at a multiple of 8) by cos, sin row r; cos null: no rotation.
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t heads = 1, half = 0;
  bool round_before_rope = true;  // RopeRounding::kBeforeRotation
};

// One interleaved RoPE pair (x0, x1) rotated by (c, s) (s negated for the inverse), without FMA
// contraction, as the CPU's separate multiplies and adds: the arithmetic of every rotation here
// (RopeKernel, RmsNormRope's RopeChunk, RopeCopyKernel), so their bits agree.
__device__ __forceinline__ void RotatePair(float& x0, float& x1, float c, float s) {
  const float r0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  const float r1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  x0 = r0;
  x1 = r1;
}

// The four pairs of an 8-wide chunk whose first pair uses entry i0 of the cos, sin row.
__device__ __forceinline__ void RotateChunk8(float (&v)[8], const float* cos, const float* sin,
                                             int64_t i0, bool inverse) {
#pragma unroll
  for (int k = 0; k < 8; k += 2) {
    const float sn = inverse ? -sin[i0 + k / 2] : sin[i0 + k / 2];
    RotatePair(v[k], v[k + 1], cos[i0 + k / 2], sn);
  }
}

// The rope part of the normalised 8-wide chunk at column c of row r, as RopeKernel rotates the
// stored values: rounded to out's dtype (unless !p.round_before_rope: kept in f32, as an f32 out
// would store them), then pairs (offset + 2i, offset + 2i + 1) by cos, sin[i] with RopeKernel's
// unfused arithmetic. offset = dim - 2·half is a multiple of 8, so a chunk is all in or all out.
__device__ __forceinline__ void RopeChunk(const RmsNormParams& p, int64_t r, int64_t c,
                                          float (&v)[8]) {
  const int64_t offset = p.dim - 2 * p.half;
  if (c < offset) return;
  if (p.out_bf16 && p.round_before_rope) {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __bfloat162float(__float2bfloat16(v[k]));
  }
  RotateChunk8(v, p.cos, p.sin, (r / p.heads) * p.half + (c - offset) / 2, /*inverse=*/false);
}

// The vectorised row (p.vec) held in registers between the sum of squares and the scaling:
// kSteps groups of eight columns a thread (dim <= 8 · kSteps · blockDim), one read of x instead
// of two. Same sums in the same order as RmsNormKernel's vectorised path.
template <int kSteps>
__global__ void RmsNormRowInRegistersKernel(RmsNormParams p) {
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t x0 = r * p.ldx, o0 = r * p.ldo;
  float v[kSteps][8];
  float sum = 0.0f;
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t c = 8 * (threadIdx.x + int64_t{s} * blockDim.x);
    if (c >= p.dim) continue;
    Load8(p.x, p.x_bf16, x0 + c, v[s]);
#pragma unroll
    for (int k = 0; k < 8; ++k) sum += v[s][k] * v[s][k];
  }
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(p.dim) + p.eps);
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t c = 8 * (threadIdx.x + int64_t{s} * blockDim.x);
    if (c >= p.dim) continue;
    float w[8];
    if (p.weight != nullptr) Load8(p.weight, p.w_bf16, c, w);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      v[s][k] *= inv;
      if (p.weight != nullptr) v[s][k] *= w[k];
    }
    if (p.cos != nullptr) RopeChunk(p, r, c, v[s]);
    Store8(p.out, p.out_bf16, o0 + c, v[s]);
  }
}

// One block per row: the sum of squares in f32, then every channel scaled (and weighted).
__global__ void RmsNormKernel(RmsNormParams p) {
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t x0 = r * p.ldx, o0 = r * p.ldo;
  float sum = 0.0f;
  if (p.vec) {
    for (int64_t c = 8 * threadIdx.x; c < p.dim; c += 8 * blockDim.x) {
      float v[8];
      Load8(p.x, p.x_bf16, x0 + c, v);
#pragma unroll
      for (int k = 0; k < 8; ++k) sum += v[k] * v[k];
    }
    sum = BlockSum(sum, scratch);
    const float inv = 1.0f / sqrtf(sum / static_cast<float>(p.dim) + p.eps);
    for (int64_t c = 8 * threadIdx.x; c < p.dim; c += 8 * blockDim.x) {
      float v[8], w[8];
      Load8(p.x, p.x_bf16, x0 + c, v);
      if (p.weight != nullptr) Load8(p.weight, p.w_bf16, c, w);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        v[k] *= inv;
        if (p.weight != nullptr) v[k] *= w[k];
      }
      if (p.cos != nullptr) RopeChunk(p, r, c, v);
      Store8(p.out, p.out_bf16, o0 + c, v);
    }
    return;
  }
  for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x) {
    const float v = LoadF(p.x, p.x_bf16, x0 + c);
    sum += v * v;
  }
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(p.dim) + p.eps);
  for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x) {
    float y = LoadF(p.x, p.x_bf16, x0 + c) * inv;
    if (p.weight != nullptr) y *= LoadF(p.weight, p.w_bf16, c);
    StoreF(p.out, p.out_bf16, o0 + c, y);
  }
}

constexpr int kInlinePositions = 512;  // positions passed in the launch parameters (2 KiB)

struct RopeTableParams {
  const float* inv_freq;
  float* cos;
  float* sin;
  int64_t first, stride, count, half;
  const int32_t* positions;  // device [count], or null: inline, or else first + r · stride
  bool use_inline;
  int32_t inline_positions[kInlinePositions];
  // RopeTablesAt: a second table at the same positions (elements count · half onwards of the
  // grid's range); null: none.
  const float* inv_freq2 = nullptr;
  float* cos2 = nullptr;
  float* sin2 = nullptr;
  int64_t half2 = 0;
};

__global__ void RopeTableKernel(RopeTableParams p) {
  WaitForPriorKernels();
  const int64_t n1 = p.count * p.half, n = n1 + p.count * p.half2;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n;
       e += int64_t{gridDim.x} * blockDim.x) {
    const bool second = e >= n1;  // RopeTablesAt's second table
    const int64_t t = second ? e - n1 : e, half = second ? p.half2 : p.half;
    const int64_t r = t / half, i = t % half;
    const int64_t position = p.positions != nullptr ? p.positions[r]
                             : p.use_inline         ? p.inline_positions[r]
                                                    : p.first + r * p.stride;
    const float2 cos_sin = RopeCosSin(position, (second ? p.inv_freq2 : p.inv_freq)[i]);
    (second ? p.cos2 : p.cos)[t] = cos_sin.x;
    (second ? p.sin2 : p.sin)[t] = cos_sin.y;
  }
}

struct RopeParams {
  void* x;
  const float* cos;
  const float* sin;
  int64_t rows, heads, row_stride, head_stride, head_dim, half;
  bool bf16, inverse;
};

// One thread per (row, head, pair).
__global__ void RopeKernel(RopeParams p) {
  WaitForPriorKernels();
  const int64_t n = p.rows * p.heads * p.half;
  const int64_t offset = p.head_dim - 2 * p.half;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e % p.half, h = (e / p.half) % p.heads, r = e / (p.half * p.heads);
    const int64_t base = r * p.row_stride + h * p.head_stride + offset + 2 * i;
    float x0 = LoadF(p.x, p.bf16, base), x1 = LoadF(p.x, p.bf16, base + 1);
    RotatePair(x0, x1, p.cos[r * p.half + i],
               p.inverse ? -p.sin[r * p.half + i] : p.sin[r * p.half + i]);
    StoreF(p.x, p.bf16, base, x0);
    StoreF(p.x, p.bf16, base + 1, x1);
  }
}

struct RopeCopyParams {
  const void* x;
  void* out;
  const float* cos;
  const float* sin;
  int64_t rows, dim, heads, half;  // rows = M·heads rows of dim; cos, sin row = row / heads
  bool x_bf16, out_bf16, inverse;
};

// A thread per 8 channels: x's values (f32 for an f32 x), the trailing 2·half channels of every
// head rotated with RopeKernel's unfused arithmetic, one rounding at out's store. offset =
// dim - 2·half is a multiple of 8, so a chunk is all in or all out.
__global__ void RopeCopyKernel(RopeCopyParams p) {
  WaitForPriorKernels();
  const int64_t chunks = p.dim / 8, n = p.rows * chunks, offset = p.dim - 2 * p.half;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = e / chunks, c = (e % chunks) * 8;
    float v[8];
    Load8(p.x, p.x_bf16, r * p.dim + c, v);
    if (c >= offset) {
      RotateChunk8(v, p.cos, p.sin, (r / p.heads) * p.half + (c - offset) / 2, p.inverse);
    }
    Store8(p.out, p.out_bf16, r * p.dim + c, v);
  }
}

struct SwiGluParams {
  const void* gate;
  const void* up;
  void* out;
  int64_t rows, cols, ldg, ldu, ldo;
  float limit;
  bool gate_bf16, up_bf16, out_bf16;
  bool vec;                       // 8-wide accesses (Vec8Ok on gate, up, out and copy)
  __nv_bfloat16* copy = nullptr;  // optional second output, bf16, rows ldc apart
  int64_t ldc = 0;
};

// One block per row (no 64-bit division per element).
__global__ void SwiGluKernel(SwiGluParams p) {
  WaitForPriorKernels();
  const int64_t r = blockIdx.x;
  if (p.vec) {
    for (int64_t c = 8 * threadIdx.x; c < p.cols; c += 8 * blockDim.x) {
      float g[8], u[8];
      Load8(p.gate, p.gate_bf16, r * p.ldg + c, g);
      Load8(p.up, p.up_bf16, r * p.ldu + c, u);
#pragma unroll
      for (int k = 0; k < 8; ++k) g[k] = SwiGluClampValue(g[k], u[k], p.limit);
      Store8(p.out, p.out_bf16, r * p.ldo + c, g);
      if (p.copy != nullptr) Store8(p.copy, true, r * p.ldc + c, g);
    }
    return;
  }
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    const float v = SwiGluClampValue(LoadF(p.gate, p.gate_bf16, r * p.ldg + c),
                                     LoadF(p.up, p.up_bf16, r * p.ldu + c), p.limit);
    StoreF(p.out, p.out_bf16, r * p.ldo + c, v);
    if (p.copy != nullptr) StoreF(p.copy, true, r * p.ldc + c, v);
  }
}

struct EmbedParams {
  const void* table;
  const int32_t* ids;
  void* out;
  int64_t num_tokens, copies, hidden;
  bool table_bf16, out_bf16;
};

// One thread a token's W consecutive channels (W = 8: Load8/Store8 on 16-byte rows with
// H % 8 == 0; else 1), read from the table once and stored into every copy.
template <int W>
__global__ void EmbedStreamsKernel(EmbedParams p) {
  WaitForPriorKernels();
  const int64_t groups = p.hidden / W;
  const int64_t total = p.num_tokens * groups;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e / groups, h = e % groups * W;
    const int64_t from = int64_t{p.ids[i]} * p.hidden + h;
    float v[W];
    LoadW<W>(p.table, p.table_bf16, from, v);
    for (int64_t j = 0; j < p.copies; ++j) {
      StoreW<W>(p.out, p.out_bf16, (i * p.copies + j) * p.hidden + h, v);
    }
  }
}

struct BiasParams {
  void* x;
  const float* bias;
  int64_t rows, width, seq_len, ratio;
  bool bf16;
};

__global__ void AddPositionBiasKernel(BiasParams p) {
  WaitForPriorKernels();
  const int64_t total = p.rows * p.width;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = e / p.width, c = e % p.width;
    const int64_t slot = (r % p.seq_len) % p.ratio;
    StoreF(p.x, p.bf16, e, LoadF(p.x, p.bf16, e) + p.bias[slot * p.width + c]);
  }
}

unsigned GridFor(int64_t n, int threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 1 << 16)));
}

// RmsNorm's checks and parameters (the rope fields unset); *params->vec says whether the kernel
// may take 8-wide rows.
absl::Status RmsNormSetup(const char* op, const core::TensorView& x, const core::TensorView& weight,
                          float eps, const core::TensorView& out, RmsNormParams* params) {
  RowView a{}, c{};
  if (absl::Status s = AsRows(op, "x", x, &a); !s.ok()) return s;
  if (absl::Status s = AsRows(op, "out", out, &c); !s.ok()) return s;
  if (a.rows != c.rows || a.cols != c.cols) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: x %s vs out %s", op, x.DebugString(),
                                                      out.DebugString()));
  }
  RmsNormParams p{a.data, nullptr, c.data, a.rows, a.cols, a.ld, c.ld, eps, a.bf16, false, c.bf16};
  if (weight.data != nullptr) {
    if (absl::Status s = CheckDeviceView(op, "weight", weight,
                                         {core::DType::kF32, core::DType::kBF16});
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckViewShape(op, "weight", weight, {a.cols}); !s.ok()) return s;
    p.weight = weight.data;
    p.w_bf16 = IsBf16(weight);
  }
  p.vec = Vec8Ok(p.x, p.ldx) && Vec8Ok(p.out, p.ldo) && p.dim % 8 == 0 &&
          (p.weight == nullptr || Vec8Ok(p.weight, p.dim));
  *params = p;
  return absl::OkStatus();
}

// cos, sin: the f32 device tables [rows, rope_dim / 2] of a rotation of rows of `dim` channels
// (rope_dim <= dim), as ApplyRope, RmsNormRope and RopeCopy take them.
absl::Status CheckRotationTables(const char* op, const core::TensorView& cos,
                                 const core::TensorView& sin, int64_t rows, int64_t dim) {
  if (absl::Status s = CheckDeviceView(op, "cos", cos, {core::DType::kF32}); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "sin", sin, {core::DType::kF32}); !s.ok()) return s;
  const std::string shape = absl::StrFormat(
      "cos must be [%d, rope_dim / 2] with rope_dim <= %d, got %s", rows, dim, cos.DebugString());
  if (absl::Status s = CheckArg(cos.rank == 2 && cos.shape[0] == rows && 2 * cos.shape[1] <= dim,
                                op, shape.c_str());
      !s.ok()) {
    return s;
  }
  return CheckViewShape(op, "sin", sin, {cos.shape[0], cos.shape[1]});
}

absl::Status LaunchRmsNorm(const char* op, const RmsNormParams& p) {
  if (p.rows == 0) return absl::OkStatus();
  const int threads =
      p.vec ? static_cast<int>(std::clamp<int64_t>((p.dim / 8 + 31) / 32 * 32, 32, 256))
            : (p.dim >= 2048 ? 512 : (p.dim >= 512 ? 256 : 128));
  // Rows of up to 4 steps of 8-wide columns a thread (8,192 columns at 256 threads) stay in
  // registers.
  LaunchKernel(RowInRegistersKernel(p.vec, p.dim, threads, RmsNormRowInRegistersKernel<1>,
                                    RmsNormRowInRegistersKernel<2>, RmsNormRowInRegistersKernel<4>,
                                    RmsNormKernel),
               static_cast<unsigned>(p.rows), threads, 0, p);
  return LaunchStatus(op);
}

}  // namespace

absl::Status RmsNorm(const core::TensorView& x, const core::TensorView& weight, float eps,
                     const core::TensorView& out) {
  const char* op = "cuda::RmsNorm";
  RmsNormParams p{};
  if (absl::Status s = RmsNormSetup(op, x, weight, eps, out, &p); !s.ok()) return s;
  return LaunchRmsNorm(op, p);
}

absl::Status RmsNormRope(const core::TensorView& x, const core::TensorView& weight, float eps,
                         const core::TensorView& cos, const core::TensorView& sin, int64_t heads,
                         const core::TensorView& out) {
  return RmsNormRope(x, weight, eps, cos, sin, heads, out, RopeRounding::kBeforeRotation);
}

absl::Status RmsNormRope(const core::TensorView& x, const core::TensorView& weight, float eps,
                         const core::TensorView& cos, const core::TensorView& sin, int64_t heads,
                         const core::TensorView& out, RopeRounding rounding) {
  const char* op = "cuda::RmsNormRope";
  RmsNormParams p{};
  if (absl::Status s = RmsNormSetup(op, x, weight, eps, out, &p); !s.ok()) return s;
  if (absl::Status s = CheckArg(heads >= 1 && p.rows % heads == 0 && out.is_contiguous(), op,
                                "heads >= 1 must divide the rows, out contiguous");
      !s.ok()) {
    return s;
  }
  const core::TensorView rotated = out.Reshape({p.rows / heads, heads, p.dim});
  if (absl::Status s = CheckRotationTables(op, cos, sin, p.rows / heads, p.dim); !s.ok()) {
    return s;
  }
  const int64_t half = cos.shape[1];
  if (!p.vec || (p.dim - 2 * half) % 8 != 0) {
    if (absl::Status s = CheckArg(rounding == RopeRounding::kBeforeRotation, op,
                                  "RopeRounding::kAfterRotation needs 8-wide rows (x, out and "
                                  "weight 16-byte aligned, D and D - rope_dim multiples of 8)");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = LaunchRmsNorm(op, p); !s.ok()) return s;
    return ApplyRope(rotated, cos, sin, /*inverse=*/false);
  }
  p.cos = cos.data_as<float>();
  p.sin = sin.data_as<float>();
  p.heads = heads;
  p.half = half;
  p.round_before_rope = rounding == RopeRounding::kBeforeRotation;
  return LaunchRmsNorm(op, p);
}

namespace {

// `suffix` follows each argument's name in the messages (RopeTablesAt's second table: "2").
absl::Status CheckRopeTables(const char* op, const core::TensorView& inv_freq,
                             const core::TensorView& cos, const core::TensorView& sin,
                             const std::string& suffix = "") {
  const std::string inv_freq_name = "inv_freq" + suffix, cos_name = "cos" + suffix,
                    sin_name = "sin" + suffix;
  for (const auto& [name, v] : {std::pair{&inv_freq_name, &inv_freq}, std::pair{&cos_name, &cos},
                                std::pair{&sin_name, &sin}}) {
    if (absl::Status s = CheckDeviceView(op, name->c_str(), *v, {core::DType::kF32}); !s.ok()) {
      return s;
    }
  }
  const std::string shapes = absl::StrFormat(
      "%s must be [count, rope_dim / 2] with %s [rope_dim / 2]", cos_name, inv_freq_name);
  if (absl::Status s =
          CheckArg(cos.rank == 2 && inv_freq.rank == 1 && cos.shape[1] == inv_freq.shape[0], op,
                   shapes.c_str());
      !s.ok()) {
    return s;
  }
  return CheckViewShape(op, sin_name.c_str(), sin, {cos.shape[0], cos.shape[1]});
}

absl::Status LaunchRopeTable(const char* op, RopeTableParams& p) {
  const int64_t n = p.count * (p.half + p.half2);
  if (n == 0) return absl::OkStatus();
  LaunchKernel(RopeTableKernel, GridFor(n, 256), 256, 0, p);
  return LaunchStatus(op);
}

}  // namespace

absl::Status RopeTableFill(const core::TensorView& inv_freq, int64_t first, int64_t stride,
                           const core::TensorView& cos, const core::TensorView& sin) {
  const char* op = "cuda::RopeTableFill";
  if (absl::Status s = CheckRopeTables(op, inv_freq, cos, sin); !s.ok()) return s;
  RopeTableParams p{};
  p = {inv_freq.data_as<float>(),
       cos.data_as<float>(),
       sin.data_as<float>(),
       first,
       stride,
       cos.shape[0],
       cos.shape[1]};
  return LaunchRopeTable(op, p);
}

absl::Status RopeTableAt(const core::TensorView& inv_freq, const core::TensorView& positions,
                         const core::TensorView& cos, const core::TensorView& sin) {
  const char* op = "cuda::RopeTableAt";
  if (absl::Status s = CheckRopeTables(op, inv_freq, cos, sin); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "positions", positions, {core::DType::kI32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckViewShape(op, "positions", positions, {cos.shape[0]}); !s.ok()) {
    return s;
  }
  RopeTableParams p{};
  p = {inv_freq.data_as<float>(),
       cos.data_as<float>(),
       sin.data_as<float>(),
       0,
       0,
       cos.shape[0],
       cos.shape[1],
       positions.data_as<const int32_t>()};
  return LaunchRopeTable(op, p);
}

absl::Status RopeTableAt(const core::TensorView& inv_freq, absl::Span<const int32_t> positions,
                         const core::TensorView& cos, const core::TensorView& sin) {
  const char* op = "cuda::RopeTableAt";
  if (absl::Status s = CheckRopeTables(op, inv_freq, cos, sin); !s.ok()) return s;
  if (absl::Status s = CheckArg(static_cast<int64_t>(positions.size()) == cos.shape[0], op,
                                "one position per row of cos");
      !s.ok()) {
    return s;
  }
  const int64_t half = cos.shape[1];
  for (size_t begin = 0; begin < positions.size(); begin += kInlinePositions) {
    RopeTableParams p{};
    p.inv_freq = inv_freq.data_as<float>();
    p.cos = cos.data_as<float>() + begin * half;
    p.sin = sin.data_as<float>() + begin * half;
    p.count = static_cast<int64_t>(std::min<size_t>(kInlinePositions, positions.size() - begin));
    p.half = half;
    p.use_inline = true;
    std::copy_n(positions.begin() + begin, p.count, p.inline_positions);
    if (absl::Status s = LaunchRopeTable(op, p); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status RopeTablesAt(const core::TensorView& positions, const core::TensorView& inv_freq,
                          const core::TensorView& cos, const core::TensorView& sin,
                          const core::TensorView& inv_freq2, const core::TensorView& cos2,
                          const core::TensorView& sin2) {
  const char* op = "cuda::RopeTablesAt";
  if (absl::Status s = CheckRopeTables(op, inv_freq, cos, sin); !s.ok()) return s;
  if (absl::Status s = CheckRopeTables(op, inv_freq2, cos2, sin2, "2"); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "positions", positions, {core::DType::kI32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckViewShape(op, "positions", positions, {cos.shape[0]}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckViewShape(op, "positions", positions, {cos2.shape[0]}); !s.ok()) {
    return s;
  }
  RopeTableParams p{};
  p.inv_freq = inv_freq.data_as<float>();
  p.cos = cos.data_as<float>();
  p.sin = sin.data_as<float>();
  p.count = cos.shape[0];
  p.half = cos.shape[1];
  p.positions = positions.data_as<const int32_t>();
  p.inv_freq2 = inv_freq2.data_as<float>();
  p.cos2 = cos2.data_as<float>();
  p.sin2 = sin2.data_as<float>();
  p.half2 = cos2.shape[1];
  return LaunchRopeTable(op, p);
}

absl::Status ApplyRope(const core::TensorView& x, const core::TensorView& cos,
                       const core::TensorView& sin, bool inverse) {
  const char* op = "cuda::ApplyRope";
  if (x.device != core::Device::kCuda || x.rank != 3 || x.strides[2] != 1 ||
      (x.dtype != core::DType::kBF16 && x.dtype != core::DType::kF32)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: x must be a bf16|f32 [M, heads, head_dim] device view with a contiguous last dim, "
        "got %s",
        op, x.DebugString()));
  }
  if (absl::Status s = CheckRotationTables(op, cos, sin, x.shape[0], x.shape[2]); !s.ok()) {
    return s;
  }
  RopeParams p{x.data, cos.data_as<float>(), sin.data_as<float>(), x.shape[0], x.shape[1],
               x.strides[0], x.strides[1], x.shape[2], cos.shape[1], IsBf16(x), inverse};
  const int64_t n = p.rows * p.heads * p.half;
  if (n == 0) return absl::OkStatus();
  LaunchKernel(RopeKernel, GridFor(n, 256), 256, 0, p);
  return LaunchStatus(op);
}

absl::Status RopeCopy(const core::TensorView& x, const core::TensorView& cos,
                      const core::TensorView& sin, bool inverse, const core::TensorView& out) {
  const char* op = "cuda::RopeCopy";
  for (const auto& [name, v] : {std::pair{"x", &x}, std::pair{"out", &out}}) {
    if (absl::Status s = CheckDeviceView(op, name, *v, {core::DType::kF32, core::DType::kBF16});
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckArg(x.rank == 3 && x.is_contiguous() && out.is_contiguous() &&
                                    out.SameShape(x.shape_vector()),
                                op, "x, out must be contiguous [M, heads, head_dim] of one shape");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRotationTables(op, cos, sin, x.shape[0], x.shape[2]); !s.ok()) {
    return s;
  }
  const int64_t dim = x.shape[2], half = cos.shape[1];
  if (absl::Status s =
          CheckArg(Vec8Ok(x.data, dim) && Vec8Ok(out.data, dim) && (dim - 2 * half) % 8 == 0, op,
                   "needs 16-byte aligned x, out and head_dim, head_dim - "
                   "rope_dim multiples of 8");
      !s.ok()) {
    return s;
  }
  RopeCopyParams p{x.data,
                   out.data,
                   cos.data_as<float>(),
                   sin.data_as<float>(),
                   x.shape[0] * x.shape[1],
                   dim,
                   x.shape[1],
                   half,
                   IsBf16(x),
                   IsBf16(out),
                   inverse};
  const int64_t n = p.rows * (dim / 8);
  if (n == 0) return absl::OkStatus();
  LaunchKernel(RopeCopyKernel, GridFor(n, 256), 256, 0, p);
  return LaunchStatus(op);
}

absl::Status SwiGluClamp(const core::TensorView& gate, const core::TensorView& up, float limit,
                         const core::TensorView& out) {
  return SwiGluClamp(gate, up, limit, out, core::TensorView());
}

absl::Status SwiGluClamp(const core::TensorView& gate, const core::TensorView& up, float limit,
                         const core::TensorView& out, const core::TensorView& copy) {
  const char* op = "cuda::SwiGluClamp";
  RowView g{}, u{}, o{}, c{};
  if (absl::Status s = AsRows(op, "gate", gate, &g); !s.ok()) return s;
  if (absl::Status s = AsRows(op, "up", up, &u); !s.ok()) return s;
  if (absl::Status s = AsRows(op, "out", out, &o); !s.ok()) return s;
  const bool with_copy = copy.data != nullptr;
  if (with_copy) {
    if (absl::Status s = AsRows(op, "copy", copy, &c); !s.ok()) return s;
  }
  if (g.rows != u.rows || g.cols != u.cols || g.rows != o.rows || g.cols != o.cols ||
      (with_copy && (!c.bf16 || c.rows != g.rows || c.cols != g.cols))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: gate %s, up %s, out %s%s%s differ (copy: bf16 of out's shape)", op,
                        gate.DebugString(), up.DebugString(), out.DebugString(),
                        with_copy ? ", copy " : "", with_copy ? copy.DebugString() : ""));
  }
  SwiGluParams p{g.data, u.data, o.data, g.rows, g.cols, g.ld, u.ld, o.ld, limit,
                 g.bf16, u.bf16, o.bf16};
  if (with_copy) {
    p.copy = static_cast<__nv_bfloat16*>(c.data);
    p.ldc = c.ld;
  }
  if (g.rows * g.cols == 0) return absl::OkStatus();
  p.vec = Vec8Ok(g.data, g.ld) && Vec8Ok(u.data, u.ld) && Vec8Ok(o.data, o.ld) &&
          (!with_copy || Vec8Ok(c.data, c.ld)) && g.cols % 8 == 0;
  LaunchKernel(SwiGluKernel, static_cast<unsigned>(g.rows), 256, 0, p);
  return LaunchStatus(op);
}

absl::Status EmbedStreams(const core::TensorView& table, const core::TensorView& ids,
                          const core::TensorView& out) {
  const char* op = "cuda::EmbedStreams";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "table", table, {DType::kBF16, DType::kF32}),
                         CheckDeviceView(op, "ids", ids, {DType::kI32}),
                         CheckDeviceView(op, "out", out, {DType::kBF16, DType::kF32}),
                         CheckArg(table.rank == 2 && ids.rank == 1 && out.rank == 3 &&
                                      out.shape[0] == ids.shape[0] && out.shape[2] == table.shape[1],
                                  op, "table [V, H], ids [N], out [N, n, H]")}) {
    if (!s.ok()) return s;
  }
  EmbedParams p{table.data, ids.data_as<int32_t>(), out.data, out.shape[0], out.shape[1],
                out.shape[2], IsBf16(table), IsBf16(out)};
  if (out.numel() == 0) return absl::OkStatus();
  const int width = Vec8Ok(table.data, p.hidden) && Vec8Ok(out.data, p.hidden) ? 8 : 1;
  LaunchKernel(width == 8 ? EmbedStreamsKernel<8> : EmbedStreamsKernel<1>,
               GridFor(p.num_tokens * p.hidden / width, 256), 256, 0, p);
  return LaunchStatus(op);
}

absl::Status AddPositionBias(const core::TensorView& x, const core::TensorView& bias,
                             int64_t seq_len) {
  const char* op = "cuda::AddPositionBias";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "x", x, {DType::kBF16, DType::kF32}),
                         CheckDeviceView(op, "bias", bias, {DType::kF32}),
                         CheckArg(x.rank == 2 && bias.rank == 2 && bias.shape[1] == x.shape[1] &&
                                      bias.shape[0] > 0 && seq_len > 0,
                                  op, "x [rows, W], bias [ratio, W], seq_len > 0")}) {
    if (!s.ok()) return s;
  }
  BiasParams p{x.data, bias.data_as<float>(), x.shape[0], x.shape[1], seq_len, bias.shape[0],
               IsBf16(x)};
  if (p.rows * p.width == 0) return absl::OkStatus();
  LaunchKernel(AddPositionBiasKernel, GridFor(p.rows * p.width, 256), 256, 0, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
