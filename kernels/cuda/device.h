// CUDA device access for the rest of v4rl without CUDA headers: device count, a device
// allocator for core::Tensor / core::Arena, and host<->device copies.
// Only code built with V4RL_WITH_CUDA links this library. Thread-safe.
#pragma once

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

// Copies between contiguous views of equal dtype and shape on any devices.
absl::Status Copy(const core::TensorView& source, const core::TensorView& destination);

// Blocks until queued work on the current device is done; returns the first pending error.
absl::Status Synchronize();

}  // namespace v4rl::kernels::cuda
