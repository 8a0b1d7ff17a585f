#include "kernels/cuda/staging.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/str_format.h"
#include "kernels/cuda/stream.h"

namespace v4rl::kernels::cuda {
namespace {

absl::Status CudaError(const char* what, cudaError_t e) {
  return absl::InternalError(absl::StrFormat("StageAsync: %s: %s", what, cudaGetErrorString(e)));
}

struct Ring {
  std::mutex mu;
  char* host = nullptr;    // pinned, kStagingSlots * kStagingSlotBytes
  char* device = nullptr;  // same size
  cudaEvent_t copied[kStagingSlots] = {};
  bool used[kStagingSlots] = {};
  int next = 0;
  void* oversized = nullptr;  // the last table larger than a slot
  size_t oversized_bytes = 0;

  // Allocates everything or nothing (a failed call leaves the ring as it was: uninitialised).
  absl::Status Init() {
    if (host != nullptr) return absl::OkStatus();
    const size_t total = kStagingSlots * kStagingSlotBytes;
    char* new_host = nullptr;
    char* new_device = nullptr;
    cudaEvent_t events[kStagingSlots] = {};
    auto release = [&] {
      for (cudaEvent_t event : events) {
        if (event != nullptr) cudaEventDestroy(event);
      }
      if (new_device != nullptr) cudaFree(new_device);
      if (new_host != nullptr) cudaFreeHost(new_host);
    };
    if (cudaError_t e = cudaMallocHost(&new_host, total); e != cudaSuccess) {
      new_host = nullptr;
      release();
      return CudaError("cudaMallocHost", e);
    }
    if (cudaError_t e = cudaMalloc(&new_device, total); e != cudaSuccess) {
      new_device = nullptr;
      release();
      return CudaError("cudaMalloc", e);
    }
    for (cudaEvent_t& event : events) {
      if (cudaError_t e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
          e != cudaSuccess) {
        event = nullptr;
        release();
        return CudaError("cudaEventCreate", e);
      }
    }
    host = new_host;
    device = new_device;
    std::copy_n(events, kStagingSlots, copied);
    return absl::OkStatus();
  }
};

Ring& TheRing() {
  static Ring* ring = new Ring();  // lives to process exit (events outlive static destructors)
  return *ring;
}

}  // namespace

absl::StatusOr<void*> StageAsync(const void* host, size_t bytes) {
  if (CurrentStream() != nullptr) {  // a graph would replay the slot's later contents
    return absl::FailedPreconditionError(
        "StageAsync: host tables cannot be recorded in a CUDA graph (the launch stream is not "
        "the default stream)");
  }
  Ring& ring = TheRing();
  std::lock_guard<std::mutex> lock(ring.mu);
  if (bytes > kStagingSlotBytes) {  // rare: a plain synchronous copy
    if (bytes > ring.oversized_bytes) {
      if (ring.oversized != nullptr) cudaFree(ring.oversized);
      ring.oversized = nullptr;
      ring.oversized_bytes = 0;
      if (cudaError_t e = cudaMalloc(&ring.oversized, bytes); e != cudaSuccess) {
        return CudaError("cudaMalloc", e);
      }
      ring.oversized_bytes = bytes;
    }
    if (cudaError_t e = cudaMemcpy(ring.oversized, host, bytes, cudaMemcpyHostToDevice);
        e != cudaSuccess) {
      return CudaError("cudaMemcpy", e);
    }
    return ring.oversized;
  }
  if (absl::Status s = ring.Init(); !s.ok()) return s;
  const int slot = ring.next;
  ring.next = (ring.next + 1) % kStagingSlots;
  if (ring.used[slot]) {  // its previous copy must have read the host slot
    if (cudaError_t e = cudaEventSynchronize(ring.copied[slot]); e != cudaSuccess) {
      return CudaError("cudaEventSynchronize", e);
    }
    ring.used[slot] = false;
  }
  char* host_slot = ring.host + slot * kStagingSlotBytes;
  char* device_slot = ring.device + slot * kStagingSlotBytes;
  std::memcpy(host_slot, host, bytes);
  if (cudaError_t e = cudaMemcpyAsync(device_slot, host_slot, bytes, cudaMemcpyHostToDevice, 0);
      e != cudaSuccess) {
    return CudaError("cudaMemcpyAsync", e);
  }
  if (cudaError_t e = cudaEventRecord(ring.copied[slot], 0); e != cudaSuccess) {
    // The copy may still be pending with no event to wait on: wait for the device instead.
    cudaDeviceSynchronize();
    return CudaError("cudaEventRecord", e);
  }
  ring.used[slot] = true;
  return device_slot;
}

}  // namespace v4rl::kernels::cuda
