// CUDA graphs of v4rl's own launches (the decode step's, model/decode_cuda.h): Capture runs a
// body of launches with this thread's launch stream (stream.h) pointed at a capture stream and
// this thread's CachingDeviceAllocator() pointed at memory the graph owns, so that the addresses
// the recorded launches read and write stay valid, and are theirs alone, while the graph lives;
// Launch replays the recording on the legacy default stream (ordered with other work there).
//
// The body must not wait for the device or the host (cudaMemcpy, cudaDeviceSynchronize, a launch
// on the legacy stream: the capture then fails and Capture returns Internal naming the CUDA
// error), and what changes between replays must reach the graph through device memory: launch
// parameters are recorded by value.
// Thread-safety: Capture records the calling thread's launches only; Launch from one thread at a
// time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/allocator.h"

namespace v4rl::kernels::cuda {

class CudaGraph {
 public:
  // Records body()'s launches (nothing runs). Tensors the body allocates from
  // CachingDeviceAllocator() come from the graph's memory(); any the caller keeps must be
  // released before the graph. Returns body()'s error, or Internal when capture or
  // instantiation fails.
  static absl::StatusOr<std::unique_ptr<CudaGraph>> Capture(
      const std::function<absl::Status()>& body);
  ~CudaGraph();  // waits for the device, then frees the graph and its memory
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Queues one replay. Internal on CUDA errors.
  absl::Status Launch();
  // Kernel, copy and memset nodes recorded.
  int64_t num_nodes() const { return num_nodes_; }
  // The allocator the body's CachingDeviceAllocator() calls used.
  core::Allocator* memory() const { return memory_.get(); }

 private:
  CudaGraph() = default;
  std::unique_ptr<core::Allocator> memory_;
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  int64_t num_nodes_ = 0;
};

}  // namespace v4rl::kernels::cuda
