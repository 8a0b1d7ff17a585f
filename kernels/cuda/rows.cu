#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rows.h"

namespace v4rl::kernels::cuda {
namespace {

// Descriptors travel in the kernel's parameters (no host-to-device copy, no sync, capturable in
// a CUDA graph): 128 pieces of 24 bytes stay under the classic 4 KiB parameter limit.
constexpr int kPiecesPerLaunch = 128;
// Copies longer than this are split so that one large copy spreads over many blocks.
constexpr int64_t kPieceBytes = 64 << 10;

struct CopyPieces {
  RowCopy pieces[kPiecesPerLaunch];
};

__global__ void __launch_bounds__(256) BatchCopyKernel(const CopyPieces batch) {
  WaitForPriorKernels();
  const RowCopy c = batch.pieces[blockIdx.x];
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
  WaitForPriorKernels();
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / width, c = i % width;
    x[i] += bias[(positions[r] % ratio) * width + c];
  }
}

}  // namespace

absl::Status BatchCopy(absl::Span<const RowCopy> copies) {
  CopyPieces batch;
  int count = 0;
  auto launch = [&]() {
    LaunchKernel(BatchCopyKernel, static_cast<unsigned>(count), 256, 0, batch);
    count = 0;
    return LaunchStatus("cuda::BatchCopy");
  };
  for (const RowCopy& copy : copies) {
    for (int64_t offset = 0; offset < copy.bytes; offset += kPieceBytes) {
      batch.pieces[count++] = {static_cast<const char*>(copy.src) + offset,
                               static_cast<char*>(copy.dst) + offset,
                               std::min(kPieceBytes, copy.bytes - offset)};
      if (count == kPiecesPerLaunch) {
        if (absl::Status s = launch(); !s.ok()) return s;
      }
    }
  }
  return count > 0 ? launch() : absl::OkStatus();
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
  LaunchKernel(AddPositionBiasAtKernel, blocks, 256, 0, x.data_as<float>(),
               bias.data_as<const float>(), positions.data_as<const int32_t>(), x.shape[0],
               x.shape[1], bias.shape[0]);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
