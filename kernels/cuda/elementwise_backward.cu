#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/elementwise_backward.h"

namespace v4rl::kernels::cuda {
namespace {

bool IsRows(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.rank == 2 && v.strides[1] == 1 &&
         v.strides[0] >= v.shape[1] && v.data != nullptr &&
         (v.dtype == core::DType::kF32 || v.dtype == core::DType::kBF16);
}
bool IsBf16(const core::TensorView& v) { return v.dtype == core::DType::kBF16; }

struct RmsNormBackwardParams {
  const void* x;
  bool x_bf16;
  int64_t ldx;
  const void* weight;  // nullptr: unweighted
  bool weight_bf16;
  const void* dy;
  bool dy_bf16;
  int64_t ldy;
  void* dx;
  bool dx_bf16;
  int64_t lddx;
  float* inv_rms;  // [rows] out, or nullptr
  int64_t rows, dim;
  float eps;
  bool vec;  // Load8/Store8 on every row (dim % 8 == 0, 16-byte aligned bases and row strides)
  bool add_to_dx;  // dx += the gradient; false: dx = 0.0f + the gradient (dx not read)
};

// The row's Σ x² and Σ w·dy·x, eight columns a thread per step (p.vec).
__device__ __forceinline__ void RmsNormBackwardSums8(const RmsNormBackwardParams& p, int64_t xo,
                                                     int64_t yo, float* sum_sq, float* dot) {
  for (int64_t c = 8 * threadIdx.x; c < p.dim; c += 8 * blockDim.x) {
    float x[8], dy[8], w[8];
    Load8(p.x, p.x_bf16, xo + c, x);
    Load8(p.dy, p.dy_bf16, yo + c, dy);
    if (p.weight) Load8(p.weight, p.weight_bf16, c, w);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      *sum_sq += x[k] * x[k];
      *dot += (p.weight ? w[k] : 1.0f) * dy[k] * x[k];
    }
  }
}

// dx[c, c + 8) of the row at go: += inv·w·dy - coef·x (p.add_to_dx), else = 0.0f + that (the bits
// of a zeroed dx, without its read).
__device__ __forceinline__ void RmsNormBackwardStore8(const RmsNormBackwardParams& p, int64_t go,
                                                      int64_t c, const float (&x)[8],
                                                      const float (&dy)[8], float inv, float coef) {
  float w[8], dx[8];
  if (p.add_to_dx) {
    Load8(p.dx, p.dx_bf16, go + c, dx);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) dx[k] = 0.0f;
  }
  if (p.weight) Load8(p.weight, p.weight_bf16, c, w);
#pragma unroll
  for (int k = 0; k < 8; ++k) dx[k] += inv * (p.weight ? w[k] : 1.0f) * dy[k] - coef * x[k];
  Store8(p.dx, p.dx_bf16, go + c, dx);
}

// The vectorised row (p.vec) with its x and dy held in registers between the sums and the
// gradient: kSteps groups of eight columns a thread (dim <= 8 · kSteps · blockDim), one read of
// each instead of two. Same sums in the same order as RmsNormBackwardKernel's vectorised path.
template <int kSteps>
__global__ void RmsNormBackwardRowInRegistersKernel(RmsNormBackwardParams p) {
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t xo = r * p.ldx, yo = r * p.ldy, go = r * p.lddx;
  float x[kSteps][8], dy[kSteps][8];
  float sum_sq = 0, dot = 0;
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t c = 8 * (threadIdx.x + int64_t{s} * blockDim.x);
    if (c >= p.dim) continue;
    float w[8];
    Load8(p.x, p.x_bf16, xo + c, x[s]);
    Load8(p.dy, p.dy_bf16, yo + c, dy[s]);
    if (p.weight) Load8(p.weight, p.weight_bf16, c, w);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      sum_sq += x[s][k] * x[s][k];
      dot += (p.weight ? w[k] : 1.0f) * dy[s][k] * x[s][k];
    }
  }
  sum_sq = BlockSum(sum_sq, scratch);
  dot = BlockSum(dot, scratch);
  const float inv = rsqrtf(sum_sq / float(p.dim) + p.eps);
  const float coef = inv * inv * inv * dot / float(p.dim);
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t c = 8 * (threadIdx.x + int64_t{s} * blockDim.x);
    if (c >= p.dim) continue;
    RmsNormBackwardStore8(p, go, c, x[s], dy[s], inv, coef);
  }
  if (p.inv_rms != nullptr && threadIdx.x == 0) p.inv_rms[r] = inv;
}

// One block per row: inv = 1/rms, dot = Σ w·dy·x, dx += inv·w·dy - inv³·dot/D · x.
__global__ void RmsNormBackwardKernel(RmsNormBackwardParams p) {
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t xo = r * p.ldx, yo = r * p.ldy, go = r * p.lddx;
  float sum_sq = 0, dot = 0;
  if (p.vec) {
    RmsNormBackwardSums8(p, xo, yo, &sum_sq, &dot);
    sum_sq = BlockSum(sum_sq, scratch);
    dot = BlockSum(dot, scratch);
    const float inv = rsqrtf(sum_sq / float(p.dim) + p.eps);
    const float coef = inv * inv * inv * dot / float(p.dim);
    for (int64_t c = 8 * threadIdx.x; c < p.dim; c += 8 * blockDim.x) {
      float x[8], dy[8];
      Load8(p.x, p.x_bf16, xo + c, x);
      Load8(p.dy, p.dy_bf16, yo + c, dy);
      RmsNormBackwardStore8(p, go, c, x, dy, inv, coef);
    }
    if (p.inv_rms != nullptr && threadIdx.x == 0) p.inv_rms[r] = inv;
    return;
  }
  for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x) {
    const float x = LoadF(p.x, p.x_bf16, xo + c);
    const float w = p.weight ? LoadF(p.weight, p.weight_bf16, c) : 1.0f;
    sum_sq += x * x;
    dot += w * LoadF(p.dy, p.dy_bf16, yo + c) * x;
  }
  sum_sq = BlockSum(sum_sq, scratch);
  dot = BlockSum(dot, scratch);
  const float inv = rsqrtf(sum_sq / float(p.dim) + p.eps);
  const float coef = inv * inv * inv * dot / float(p.dim);
  for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x) {
    const float x = LoadF(p.x, p.x_bf16, xo + c);
    const float w = p.weight ? LoadF(p.weight, p.weight_bf16, c) : 1.0f;
    const float g = inv * w * LoadF(p.dy, p.dy_bf16, yo + c) - coef * x;
    const float base = p.add_to_dx ? LoadF(p.dx, p.dx_bf16, go + c) : 0.0f;
    StoreF(p.dx, p.dx_bf16, go + c, base + g);
  }
  if (p.inv_rms != nullptr && threadIdx.x == 0) p.inv_rms[r] = inv;
}

// dweight[c] += Σ_r dy[r, c]·x[r, c]·inv[r] (AddColumnSums' value).
struct RmsNormWeightGradValue {
  RmsNormBackwardParams p;
  __device__ float operator()(int64_t r, int64_t c) const {
    return LoadF(p.dy, p.dy_bf16, r * p.ldy + c) * LoadF(p.x, p.x_bf16, r * p.ldx + c) *
           p.inv_rms[r];
  }
};

struct SwiGluBackwardParams {
  const void* gate;
  const void* up;
  const void* dy;
  void* dgate;
  void* dup;
  bool gate_bf16, up_bf16, dy_bf16, dgate_bf16, dup_bf16;
  int64_t ld_gate, ld_up, ld_dy, ld_dgate, ld_dup;
  int64_t rows, cols;
  float limit;
  bool overwrite;  // dgate, dup = (not read; zeros where clamped) instead of +=
};

// One element's gradients: g, u the SwiGLU's inputs, dy the output gradient; dgate and dup the
// values to add, or (with overwrite) to store: zero for a clamped input.
__device__ __forceinline__ void SwiGluElementGrads(float g, float u, float dy, float limit,
                                                   float* dgate, float* dup, bool* gate_passes,
                                                   bool* up_passes) {
  *gate_passes = true, *up_passes = true;
  if (limit > 0.0f) {
    *gate_passes = g <= limit;
    *up_passes = u >= -limit && u <= limit;
    g = fminf(g, limit);
    u = fminf(fmaxf(u, -limit), limit);
  }
  const float sig = 1.0f / (1.0f + expf(-g));
  *dgate = *gate_passes ? dy * u * sig * (1.0f + g * (1.0f - sig)) : 0.0f;
  *dup = *up_passes ? dy * g * sig : 0.0f;
}

__global__ void SwiGluBackwardKernel(SwiGluBackwardParams p) {
  WaitForPriorKernels();
  const int64_t total = p.rows * p.cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.cols, c = i % p.cols;
    float dgate, dup;
    bool gate_passes, up_passes;
    SwiGluElementGrads(
        LoadF(p.gate, p.gate_bf16, r * p.ld_gate + c), LoadF(p.up, p.up_bf16, r * p.ld_up + c),
        LoadF(p.dy, p.dy_bf16, r * p.ld_dy + c), p.limit, &dgate, &dup, &gate_passes, &up_passes);
    const int64_t og = r * p.ld_dgate + c, ou = r * p.ld_dup + c;
    if (p.overwrite) {
      StoreF(p.dgate, p.dgate_bf16, og, dgate);
      StoreF(p.dup, p.dup_bf16, ou, dup);
      continue;
    }
    if (gate_passes) StoreF(p.dgate, p.dgate_bf16, og, LoadF(p.dgate, p.dgate_bf16, og) + dgate);
    if (up_passes) StoreF(p.dup, p.dup_bf16, ou, LoadF(p.dup, p.dup_bf16, ou) + dup);
  }
}

// The same, eight columns a thread (every row view Vec8Ok, cols % 8 == 0): 16-byte loads and
// stores, one division a group of eight.
__global__ void SwiGluBackwardVec8Kernel(SwiGluBackwardParams p) {
  WaitForPriorKernels();
  const int64_t groups = p.cols / 8, total = p.rows * groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / groups, c = 8 * (i % groups);
    float g[8], u[8], dy[8], dgate[8], dup[8];
    Load8(p.gate, p.gate_bf16, r * p.ld_gate + c, g);
    Load8(p.up, p.up_bf16, r * p.ld_up + c, u);
    Load8(p.dy, p.dy_bf16, r * p.ld_dy + c, dy);
    float old_gate[8], old_up[8];
    if (!p.overwrite) {
      Load8(p.dgate, p.dgate_bf16, r * p.ld_dgate + c, old_gate);
      Load8(p.dup, p.dup_bf16, r * p.ld_dup + c, old_up);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      bool gate_passes, up_passes;
      SwiGluElementGrads(g[j], u[j], dy[j], p.limit, &dgate[j], &dup[j], &gate_passes, &up_passes);
      if (!p.overwrite) {  // a clamped input leaves the old value as it was (+ 0)
        dgate[j] = gate_passes ? old_gate[j] + dgate[j] : old_gate[j];
        dup[j] = up_passes ? old_up[j] + dup[j] : old_up[j];
      }
    }
    Store8(p.dgate, p.dgate_bf16, r * p.ld_dgate + c, dgate);
    Store8(p.dup, p.dup_bf16, r * p.ld_dup + c, dup);
  }
}

}  // namespace

absl::Status RmsNormBackward(const core::TensorView& x, const core::TensorView& weight, float eps,
                             const core::TensorView& dy, const core::TensorView& dx,
                             const core::TensorView& dweight) {
  return RmsNormBackward(x, weight, eps, dy, dx, dweight, DxWrite::kAdd);
}

absl::Status RmsNormBackward(const core::TensorView& x, const core::TensorView& weight, float eps,
                             const core::TensorView& dy, const core::TensorView& dx,
                             const core::TensorView& dweight, DxWrite dx_write) {
  const bool weighted = weight.data != nullptr;
  if (!IsRows(x) || !IsRows(dy) || !IsRows(dx) || dy.shape[0] != x.shape[0] ||
      dy.shape[1] != x.shape[1] || dx.shape[0] != x.shape[0] || dx.shape[1] != x.shape[1] ||
      (weighted && (weight.device != core::Device::kCuda || weight.numel() != x.shape[1] ||
                    !weight.is_contiguous() ||
                    (weight.dtype != core::DType::kF32 && !IsBf16(weight)))) ||
      (dweight.data != nullptr &&
       (dweight.device != core::Device::kCuda || dweight.dtype != core::DType::kF32 ||
        dweight.numel() != x.shape[1] || !dweight.is_contiguous())) ||
      dx.data == x.data || dx.data == dy.data) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RmsNormBackward: x %s, weight %s, dy %s, dx %s, dweight %s do not fit", x.DebugString(),
        weight.DebugString(), dy.DebugString(), dx.DebugString(), dweight.DebugString()));
  }
  const int64_t rows = x.shape[0], dim = x.shape[1];
  if (rows == 0 || dim == 0) return absl::OkStatus();
  const bool want_dweight = weighted && dweight.data != nullptr;
  float* inv_rms = nullptr;
  if (want_dweight) {
    if (cudaMallocAsync(reinterpret_cast<void**>(&inv_rms), rows * sizeof(float), 0) != cudaSuccess) {
      return absl::ResourceExhaustedError("RmsNormBackward: cudaMallocAsync of the row statistics");
    }
  }
  RmsNormBackwardParams p{x.data,      IsBf16(x),  x.strides[0],  weight.data, IsBf16(weight),
                          dy.data,     IsBf16(dy), dy.strides[0], dx.data,     IsBf16(dx),
                          dx.strides[0], inv_rms,  rows,          dim,         eps};
  p.add_to_dx = dx_write == DxWrite::kAdd;
  p.vec = Vec8Ok(x.data, x.strides[0]) && Vec8Ok(dy.data, dy.strides[0]) &&
          Vec8Ok(dx.data, dx.strides[0]) && dim % 8 == 0 && (!weighted || Vec8Ok(weight.data, dim));
  // Vectorised: a thread per 8 columns, up to 256 (a row of 512 gets two warps, so that the many
  // short rows of the per-head norms fill the GPU); else up to 1024 threads a column each.
  const int threads = p.vec ? static_cast<int>(std::min<int64_t>(256, (dim / 8 + 31) / 32 * 32))
                      : dim >= 1024 ? 1024
                      : dim >= 256  ? 256
                                    : 128;
  // Rows of up to 4 steps of 8-wide columns a thread (8,192 columns at 256 threads: the mHC's
  // flattened streams) keep x and dy in registers.
  LaunchKernel(RowInRegistersKernel(p.vec, dim, threads, RmsNormBackwardRowInRegistersKernel<1>,
                                    RmsNormBackwardRowInRegistersKernel<2>,
                                    RmsNormBackwardRowInRegistersKernel<4>, RmsNormBackwardKernel),
               rows, threads, 0, p);
  if (want_dweight) {
    const absl::Status status = AddColumnSums("RmsNormBackward", RmsNormWeightGradValue{p}, rows,
                                              dim, static_cast<float*>(dweight.data));
    cudaFreeAsync(inv_rms, 0);
    if (!status.ok()) return status;
  }
  return LaunchStatus("RmsNormBackward");
}

absl::Status RopeBackward(const core::TensorView& grad, const core::TensorView& cos,
                          const core::TensorView& sin, bool inverse) {
  return ApplyRope(grad, cos, sin, !inverse);
}

absl::Status SwiGluClampBackward(const core::TensorView& gate, const core::TensorView& up,
                                 float limit, const core::TensorView& dy,
                                 const core::TensorView& dgate, const core::TensorView& dup) {
  return SwiGluClampBackward(gate, up, limit, dy, dgate, dup, DxWrite::kAdd);
}

absl::Status SwiGluClampBackward(const core::TensorView& gate, const core::TensorView& up,
                                 float limit, const core::TensorView& dy,
                                 const core::TensorView& dgate, const core::TensorView& dup,
                                 DxWrite write) {
  const core::TensorView* views[] = {&gate, &up, &dy, &dgate, &dup};
  for (const core::TensorView* v : views) {
    if (!IsRows(*v) || v->shape[0] != gate.shape[0] || v->shape[1] != gate.shape[1]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "SwiGluClampBackward: gate %s, up %s, dy %s, dgate %s, dup %s must be equal-shaped "
          "bf16|f32 device row views", gate.DebugString(), up.DebugString(), dy.DebugString(),
          dgate.DebugString(), dup.DebugString()));
    }
  }
  if (dgate.data == dup.data || dgate.data == gate.data || dgate.data == up.data ||
      dup.data == gate.data || dup.data == up.data || dgate.data == dy.data || dup.data == dy.data) {
    return absl::InvalidArgumentError("SwiGluClampBackward: gradients alias an input or each other");
  }
  SwiGluBackwardParams p{gate.data,
                         up.data,
                         dy.data,
                         dgate.data,
                         dup.data,
                         IsBf16(gate),
                         IsBf16(up),
                         IsBf16(dy),
                         IsBf16(dgate),
                         IsBf16(dup),
                         gate.strides[0],
                         up.strides[0],
                         dy.strides[0],
                         dgate.strides[0],
                         dup.strides[0],
                         gate.shape[0],
                         gate.shape[1],
                         limit,
                         write == DxWrite::kOverwrite};
  const int64_t total = p.rows * p.cols;
  if (total == 0) return absl::OkStatus();
  bool vec8 = p.cols % 8 == 0;
  for (const core::TensorView* v : views) vec8 = vec8 && Vec8Ok(v->data, v->strides[0]);
  const int64_t items = vec8 ? total / 8 : total;
  const int64_t blocks = std::min<int64_t>((items + 255) / 256, 65536);
  LaunchKernel(vec8 ? SwiGluBackwardVec8Kernel : SwiGluBackwardKernel, blocks, 256, 0, p);
  return LaunchStatus("SwiGluClampBackward");
}

}  // namespace v4rl::kernels::cuda
