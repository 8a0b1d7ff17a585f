// CUDA device access for the rest of v4rl without CUDA headers: device count, a device
// allocator for core::Tensor / core::Arena, and host<->device copies.
// Only code built with V4RL_WITH_CUDA links this library. Thread-safe.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "core/allocator.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// Number of visible CUDA devices (0 when the driver or a device is missing).
int DeviceCount();
// "NVIDIA H200 (sm_90, 139.8 GiB)" or an error when no device is usable.
absl::StatusOr<std::string> DeviceDescription(int device = 0);

// Allocator handing out device memory of the current device (cudaMalloc).
core::Allocator* DeviceAllocator();
// The same memory through a cache: freed blocks are kept for later requests of the same rounded
// size instead of cudaFree (which synchronises the device). Blocks are reused in stream order, so
// only for memory used on the default stream. Never shrinks except when cudaMalloc fails.
core::Allocator* CachingDeviceAllocator();

// A device scratch buffer that only grows (cudaFree of the old one synchronises the device):
// kernels keep one per call site for per-launch temporaries, e.g. split partials. Get returns at
// least `bytes`, valid until the next Get; one host thread at a time uses the contents.
class GrowingDeviceBuffer {
 public:
  explicit GrowingDeviceBuffer(const char* what) : what_(what) {}
  absl::StatusOr<void*> Get(size_t bytes);

 private:
  const char* what_;
  std::mutex mu_;
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

// Copies between contiguous views of equal dtype and shape on any devices.
absl::Status Copy(const core::TensorView& source, const core::TensorView& destination);

// Blocks until queued work on the current device is done; returns the first pending error.
absl::Status Synchronize();

}  // namespace v4rl::kernels::cuda
