// CUDA device access for the rest of v4rl without CUDA headers: device count, a device
// allocator for core::Tensor / core::Arena, and host<->device copies.
// Only code built with V4RL_WITH_CUDA links this library. Thread-safe.
#pragma once

#include <memory>
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
// only for memory used on this thread's launch stream (stream.h). Never shrinks except when
// cudaMalloc fails. A ScopedCachingDeviceAllocator on this thread substitutes another.
core::Allocator* CachingDeviceAllocator();

// A caching allocator of its own, like CachingDeviceAllocator(), whose blocks are freed
// (cudaFree, after waiting for the device) when it is destroyed; every tensor it allocated must
// be gone by then. CudaGraph (graph.h) keeps the memory of a recorded step in one.
std::unique_ptr<core::Allocator> NewCachingDeviceAllocator();

// While the scope lives, CachingDeviceAllocator() on this thread returns `allocator` instead of
// the process-wide cache (restoring the previous one after).
class ScopedCachingDeviceAllocator {
 public:
  explicit ScopedCachingDeviceAllocator(core::Allocator* allocator);
  ~ScopedCachingDeviceAllocator();
  ScopedCachingDeviceAllocator(const ScopedCachingDeviceAllocator&) = delete;
  ScopedCachingDeviceAllocator& operator=(const ScopedCachingDeviceAllocator&) = delete;

 private:
  core::Allocator* previous_;
};

// While the scope lives, blocks that this thread's CachingDeviceAllocator() frees are kept out of
// its cache, and return to it when the scope ends (nested scopes: when the outermost ends). For
// work queued on several streams at once (RunConcurrently, graph.h): a block one stream's launches
// may still use must not go to another before the streams join. A no-op for an allocator that
// is not a caching one.
class ScopedHeldFrees {
 public:
  ScopedHeldFrees();
  ~ScopedHeldFrees();
  ScopedHeldFrees(const ScopedHeldFrees&) = delete;
  ScopedHeldFrees& operator=(const ScopedHeldFrees&) = delete;

 private:
  core::Allocator* allocator_;
};

// Copies between contiguous views of equal dtype and shape on any devices.
absl::Status Copy(const core::TensorView& source, const core::TensorView& destination);

// The same between device views, queued on this thread's launch stream (stream.h) without
// waiting for the host (a CUDA graph can record it).
absl::Status CopyOnDevice(const core::TensorView& source, const core::TensorView& destination);

// Blocks until queued work on the current device is done; returns the first pending error.
absl::Status Synchronize();

}  // namespace v4rl::kernels::cuda
