#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/convert.h"

namespace v4rl::kernels::cuda {
namespace {

struct ConvertParams {
  const void* in;
  void* out;
  int64_t n;
};

__global__ void F32ToBf16Kernel(ConvertParams p) {
  WaitForPriorKernels();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < p.n;
       i += int64_t{gridDim.x} * blockDim.x) {
    // __float2bfloat16 rounds to nearest even and keeps NaN, like core::FloatToBf16.
    static_cast<__nv_bfloat16*>(p.out)[i] = __float2bfloat16(static_cast<const float*>(p.in)[i]);
  }
}

__global__ void Bf16ToF32Kernel(ConvertParams p) {
  WaitForPriorKernels();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < p.n;
       i += int64_t{gridDim.x} * blockDim.x) {
    static_cast<float*>(p.out)[i] = __bfloat162float(static_cast<const __nv_bfloat16*>(p.in)[i]);
  }
}

struct RowsParams {
  const float* in;
  int64_t ld, rows, cols;
  __nv_bfloat16* out;  // packed [rows, cols]
};

// Four columns a thread (cols and ld multiples of 4, 16-byte aligned rows).
__global__ void F32ToBf16RowsVec4Kernel(RowsParams p, int64_t quads) {
  WaitForPriorKernels();
  const int64_t quads_per_row = p.cols / 4;
  for (int64_t q = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; q < quads;
       q += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = q / quads_per_row, c = (q % quads_per_row) * 4;
    const float4 v = *reinterpret_cast<const float4*>(p.in + r * p.ld + c);
    __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(p.out + r * p.cols + c);
    out[0] = __floats2bfloat162_rn(v.x, v.y);
    out[1] = __floats2bfloat162_rn(v.z, v.w);
  }
}

__global__ void F32ToBf16RowsKernel(RowsParams p, int64_t n) {
  WaitForPriorKernels();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    p.out[i] = __float2bfloat16(p.in[(i / p.cols) * p.ld + i % p.cols]);
  }
}

absl::Status Validate(const core::TensorView& in, core::DType in_dtype,
                      const core::TensorView& out, core::DType out_dtype) {
  if (in.dtype != in_dtype || out.dtype != out_dtype || in.numel() != out.numel() ||
      !in.is_contiguous() || !out.is_contiguous() || in.device != core::Device::kCuda ||
      out.device != core::Device::kCuda) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expected contiguous device views %s -> %s of equal size, got %s -> %s",
        core::DTypeName(in_dtype), core::DTypeName(out_dtype), in.DebugString(),
        out.DebugString()));
  }
  return absl::OkStatus();
}

template <typename Kernel>
absl::Status Launch(Kernel kernel, const ConvertParams& params) {
  if (params.n == 0) return absl::OkStatus();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((params.n + threads - 1) / threads, 65535);
  LaunchKernel(kernel, static_cast<unsigned>(blocks), threads, 0, params);
  if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("kernel launch: %s", cudaGetErrorString(error)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status F32ToBf16(const core::TensorView& in, const core::TensorView& out) {
  if (absl::Status s = Validate(in, core::DType::kF32, out, core::DType::kBF16); !s.ok()) return s;
  return Launch(F32ToBf16Kernel, {in.data, out.data, in.numel()});
}

absl::Status F32ToBf16Rows(const core::TensorView& in, const core::TensorView& out) {
  const bool rows = in.rank == 2 && in.dtype == core::DType::kF32 &&
                    in.device == core::Device::kCuda && in.strides[1] == 1 &&
                    in.strides[0] >= in.shape[1];
  if (!rows || out.dtype != core::DType::kBF16 || !out.is_contiguous() ||
      out.device != core::Device::kCuda || !out.SameShape(in.shape_vector())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "F32ToBf16Rows: expected an f32 device row view and a contiguous bf16 device tensor of "
        "its shape, got %s -> %s",
        in.DebugString(), out.DebugString()));
  }
  const int64_t n = in.numel();
  if (n == 0) return absl::OkStatus();
  const RowsParams p{static_cast<const float*>(in.data), in.strides[0], in.shape[0], in.shape[1],
                     static_cast<__nv_bfloat16*>(out.data)};
  const bool vec4 = p.cols % 4 == 0 && p.ld % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(p.in) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.out) % 8 == 0;
  const int threads = 256;
  const int64_t work = vec4 ? n / 4 : n;
  const auto blocks =
      static_cast<unsigned>(std::min<int64_t>((work + threads - 1) / threads, 4 * 65535));
  if (vec4) {
    LaunchKernel(F32ToBf16RowsVec4Kernel, blocks, threads, 0, p, n / 4);
  } else {
    LaunchKernel(F32ToBf16RowsKernel, blocks, threads, 0, p, n);
  }
  if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
    return absl::InternalError(
        absl::StrFormat("F32ToBf16Rows: kernel launch: %s", cudaGetErrorString(error)));
  }
  return absl::OkStatus();
}

absl::Status Bf16ToF32(const core::TensorView& in, const core::TensorView& out) {
  if (absl::Status s = Validate(in, core::DType::kBF16, out, core::DType::kF32); !s.ok()) return s;
  return Launch(Bf16ToF32Kernel, {in.data, out.data, in.numel()});
}

}  // namespace v4rl::kernels::cuda
