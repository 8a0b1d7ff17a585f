#include "kernels/cuda/device.h"

#include <cuda_runtime.h>

#include "absl/strings/str_format.h"
#include "core/logging.h"

namespace v4rl::kernels::cuda {
namespace {

absl::Status CudaError(cudaError_t error, const char* what) {
  return absl::InternalError(absl::StrFormat("%s: %s", what, cudaGetErrorString(error)));
}

class DeviceAllocatorImpl final : public core::Allocator {
 public:
  void* Allocate(size_t bytes) override {
    void* pointer = nullptr;
    const cudaError_t error = cudaMalloc(&pointer, bytes == 0 ? 1 : bytes);
    V4RL_CHECK(error == cudaSuccess) << "cudaMalloc(" << bytes << "): " << cudaGetErrorString(error);
    return pointer;
  }
  void Free(void* pointer) override { cudaFree(pointer); }
  core::Device device() const override { return core::Device::kCuda; }
};

}  // namespace

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

absl::StatusOr<std::string> DeviceDescription(int device) {
  cudaDeviceProp properties;
  if (cudaError_t error = cudaGetDeviceProperties(&properties, device); error != cudaSuccess) {
    return CudaError(error, "cudaGetDeviceProperties");
  }
  return absl::StrFormat("%s (sm_%d%d, %.1f GiB)", properties.name, properties.major,
                         properties.minor, properties.totalGlobalMem / double(1 << 30));
}

core::Allocator* DeviceAllocator() {
  static auto* allocator = new DeviceAllocatorImpl();
  return allocator;
}

absl::Status Copy(const core::TensorView& source, const core::TensorView& destination) {
  if (source.dtype != destination.dtype || !source.SameShape(destination.shape_vector()) ||
      !source.is_contiguous() || !destination.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::Copy needs contiguous views of equal dtype and shape, got %s -> %s",
        source.DebugString(), destination.DebugString()));
  }
  const cudaError_t error =
      cudaMemcpy(destination.data, source.data, source.nbytes(), cudaMemcpyDefault);
  if (error != cudaSuccess) return CudaError(error, "cudaMemcpy");
  return absl::OkStatus();
}

absl::Status Synchronize() {
  if (cudaError_t error = cudaDeviceSynchronize(); error != cudaSuccess) {
    return CudaError(error, "cudaDeviceSynchronize");
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
