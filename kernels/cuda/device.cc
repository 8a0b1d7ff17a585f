#include "kernels/cuda/device.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/logging.h"
#include "kernels/cuda/stream.h"

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

// Keeps freed blocks (sizes rounded up to 512 B, above 1 MiB to 2 MiB) for reuse by requests of
// the same rounded size; on cudaMalloc failure gives every cached block back and retries.
class CachingAllocatorImpl final : public core::Allocator {
 public:
  void* Allocate(size_t bytes) override {
    const size_t rounded = bytes <= (size_t{1} << 20) ? (std::max<size_t>(bytes, 1) + 511) / 512 * 512
                                                      : (bytes + (size_t{2} << 20) - 1) /
                                                            (size_t{2} << 20) * (size_t{2} << 20);
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = free_.find(rounded); it != free_.end()) {
      void* pointer = it->second;
      free_.erase(it);
      return pointer;
    }
    void* pointer = nullptr;
    cudaError_t error = cudaMalloc(&pointer, rounded);
    if (error != cudaSuccess) {
      cudaGetLastError();
      for (auto& [size, cached] : free_) {
        cudaFree(cached);
        sizes_.erase(cached);
      }
      free_.clear();
      error = cudaMalloc(&pointer, rounded);
    }
    V4RL_CHECK(error == cudaSuccess) << "cudaMalloc(" << bytes << "): " << cudaGetErrorString(error);
    sizes_[pointer] = rounded;
    return pointer;
  }
  void Free(void* pointer) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (holds_ > 0) {
      held_.push_back(pointer);
    } else {
      free_.emplace(sizes_.at(pointer), pointer);
    }
  }
  // ScopedHeldFrees: frees between Hold() and the matching Release() reach the cache at the end.
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    ++holds_;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--holds_ > 0) return;
    for (void* pointer : held_) free_.emplace(sizes_.at(pointer), pointer);
    held_.clear();
  }
  // Frees every block it handed out (the process-wide cache is never destroyed).
  ~CachingAllocatorImpl() override {
    cudaDeviceSynchronize();
    for (const auto& [pointer, size] : sizes_) cudaFree(pointer);
  }
  core::Device device() const override { return core::Device::kCuda; }

 private:
  std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;
  std::multimap<size_t, void*> free_;
  int holds_ = 0;
  std::vector<void*> held_;
};

thread_local core::Allocator* thread_caching_allocator = nullptr;
thread_local void* thread_stream = nullptr;

}  // namespace

core::Allocator* CachingDeviceAllocator() {
  if (thread_caching_allocator != nullptr) return thread_caching_allocator;
  static auto* allocator = new CachingAllocatorImpl();
  return allocator;
}

std::unique_ptr<core::Allocator> NewCachingDeviceAllocator() {
  return std::make_unique<CachingAllocatorImpl>();
}

ScopedCachingDeviceAllocator::ScopedCachingDeviceAllocator(core::Allocator* allocator)
    : previous_(thread_caching_allocator) {
  thread_caching_allocator = allocator;
}
ScopedCachingDeviceAllocator::~ScopedCachingDeviceAllocator() {
  thread_caching_allocator = previous_;
}

ScopedHeldFrees::ScopedHeldFrees() : allocator_(CachingDeviceAllocator()) {
  if (auto* caching = dynamic_cast<CachingAllocatorImpl*>(allocator_)) caching->Hold();
}
ScopedHeldFrees::~ScopedHeldFrees() {
  if (auto* caching = dynamic_cast<CachingAllocatorImpl*>(allocator_)) caching->Release();
}

void* CurrentStream() { return thread_stream; }
ScopedStream::ScopedStream(void* stream) : previous_(thread_stream) { thread_stream = stream; }
ScopedStream::~ScopedStream() { thread_stream = previous_; }

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

absl::Status CopyOnDevice(const core::TensorView& source, const core::TensorView& destination) {
  if (source.dtype != destination.dtype || !source.SameShape(destination.shape_vector()) ||
      !source.is_contiguous() || !destination.is_contiguous() ||
      source.device != core::Device::kCuda || destination.device != core::Device::kCuda) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::CopyOnDevice needs contiguous device views of equal dtype and shape, got %s -> %s",
        source.DebugString(), destination.DebugString()));
  }
  const cudaError_t error =
      cudaMemcpyAsync(destination.data, source.data, source.nbytes(), cudaMemcpyDeviceToDevice,
                      static_cast<cudaStream_t>(CurrentStream()));
  if (error != cudaSuccess) return CudaError(error, "cudaMemcpyAsync");
  return absl::OkStatus();
}

absl::Status Synchronize() {
  if (cudaError_t error = cudaDeviceSynchronize(); error != cudaSuccess) {
    return CudaError(error, "cudaDeviceSynchronize");
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
