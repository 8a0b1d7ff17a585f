#include "kernels/cuda/rows.h"

#include <algorithm>
#include <mutex>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {
namespace {

__global__ void BatchCopyKernel(const RowCopy* copies) {
  const RowCopy c = copies[blockIdx.x];
  const uintptr_t s = reinterpret_cast<uintptr_t>(c.src), d = reinterpret_cast<uintptr_t>(c.dst);
  if (((s | d | static_cast<uintptr_t>(c.bytes)) & 15) == 0) {
    const uint4* src = static_cast<const uint4*>(c.src);
    uint4* dst = static_cast<uint4*>(c.dst);
    for (int64_t i = threadIdx.x; i < c.bytes / 16; i += blockDim.x) dst[i] = src[i];
  } else {
    const uint8_t* src = static_cast<const uint8_t*>(c.src);
    uint8_t* dst = static_cast<uint8_t*>(c.dst);
    for (int64_t i = threadIdx.x; i < c.bytes; i += blockDim.x) dst[i] = src[i];
  }
}

__global__ void AddPositionBiasAtKernel(float* x, const float* bias, const int32_t* positions,
                                        int64_t rows, int64_t width, int64_t ratio) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / width, c = i % width;
    x[i] += bias[(positions[r] % ratio) * width + c];
  }
}

}  // namespace

absl::Status BatchCopy(absl::Span<const RowCopy> copies) {
  if (copies.empty()) return absl::OkStatus();
  static std::mutex mu;
  static RowCopy* staged = nullptr;
  static size_t staged_capacity = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (copies.size() > staged_capacity) {
    if (staged != nullptr) cudaFree(staged);
    staged_capacity = std::max<size_t>(copies.size(), 2 * staged_capacity);
    if (cudaError_t e = cudaMalloc(&staged, staged_capacity * sizeof(RowCopy)); e != cudaSuccess) {
      staged = nullptr;
      staged_capacity = 0;
      return absl::InternalError(
          absl::StrFormat("cuda::BatchCopy: cudaMalloc: %s", cudaGetErrorString(e)));
    }
  }
  // Pageable source: cudaMemcpy waits for earlier work (a previous launch reading the buffer).
  if (cudaError_t e = cudaMemcpy(staged, copies.data(), copies.size() * sizeof(RowCopy),
                                 cudaMemcpyHostToDevice);
      e != cudaSuccess) {
    return absl::InternalError(
        absl::StrFormat("cuda::BatchCopy: cudaMemcpy: %s", cudaGetErrorString(e)));
  }
  for (size_t first = 0; first < copies.size(); first += 65535) {
    const unsigned blocks = static_cast<unsigned>(std::min<size_t>(65535, copies.size() - first));
    BatchCopyKernel<<<blocks, 128>>>(staged + first);
  }
  return LaunchStatus("cuda::BatchCopy");
}

absl::Status AddPositionBiasAt(const core::TensorView& x, const core::TensorView& bias,
                               const core::TensorView& positions) {
  const char* op = "cuda::AddPositionBiasAt";
  using core::DType;
  if (absl::Status s = CheckDeviceView(op, "x", x, {DType::kF32}); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "bias", bias, {DType::kF32}); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "positions", positions, {DType::kI32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckArg(x.rank == 2 && bias.rank == 2 && bias.shape[1] == x.shape[1] &&
                                    positions.rank == 1 && positions.shape[0] == x.shape[0] &&
                                    bias.shape[0] > 0,
                                op, "x [rows, W], bias [ratio, W], positions [rows]");
      !s.ok()) {
    return s;
  }
  const int64_t total = x.shape[0] * x.shape[1];
  if (total == 0) return absl::OkStatus();
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, int64_t{1} << 16));
  AddPositionBiasAtKernel<<<blocks, 256>>>(x.data_as<float>(), bias.data_as<const float>(),
                                           positions.data_as<const int32_t>(), x.shape[0],
                                           x.shape[1], bias.shape[0]);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
