#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "absl/strings/str_format.h"
#include "kernels/cuda/convert.h"

namespace v4rl::kernels::cuda {
namespace {

struct ConvertParams {
  const void* in;
  void* out;
  int64_t n;
};

__global__ void F32ToBf16Kernel(ConvertParams p) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < p.n;
       i += int64_t{gridDim.x} * blockDim.x) {
    // __float2bfloat16 rounds to nearest even and keeps NaN, like core::FloatToBf16.
    static_cast<__nv_bfloat16*>(p.out)[i] = __float2bfloat16(static_cast<const float*>(p.in)[i]);
  }
}

__global__ void Bf16ToF32Kernel(ConvertParams p) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < p.n;
       i += int64_t{gridDim.x} * blockDim.x) {
    static_cast<float*>(p.out)[i] = __bfloat162float(static_cast<const __nv_bfloat16*>(p.in)[i]);
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
  kernel<<<static_cast<unsigned>(blocks), threads>>>(params);
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

absl::Status Bf16ToF32(const core::TensorView& in, const core::TensorView& out) {
  if (absl::Status s = Validate(in, core::DType::kBF16, out, core::DType::kF32); !s.ok()) return s;
  return Launch(Bf16ToF32Kernel, {in.data, out.data, in.numel()});
}

}  // namespace v4rl::kernels::cuda
