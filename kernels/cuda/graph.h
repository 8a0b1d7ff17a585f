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
// RunConcurrently lets a body record independent chains of launches as parallel branches of the
// graph, which the GPU then runs at once (the decode step's small, latency-bound kernels leave
// most SMs idle).
// Thread-safety: Capture records the calling thread's launches only; Launch from one thread at a
// time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
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
  // Kernel, copy and memset nodes recorded, and the dependency edges between them (a chain of n
  // nodes has n - 1; a RunConcurrently of b branches that launch, between launches, adds b - 1).
  int64_t num_nodes() const { return num_nodes_; }
  int64_t num_edges() const { return num_edges_; }
  // The allocator the body's CachingDeviceAllocator() calls used.
  core::Allocator* memory() const { return memory_.get(); }

 private:
  CudaGraph() = default;
  std::unique_ptr<core::Allocator> memory_;
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  int64_t num_nodes_ = 0;
  int64_t num_edges_ = 0;
};

// Inside a CudaGraph::Capture body: records branches[0] on the stream this call records on and
// each later branch on a stream of its own, as parallel branches of the graph that fork after the
// launches recorded so far and join before those recorded after. A branch may itself call
// RunConcurrently (it forks again from its own stream). No branch may launch work that reads or
// writes what another writes, nor wait for another; a cuBLASLt handle (one workspace) serves one
// branch at a time. Blocks that this thread's CachingDeviceAllocator() frees while they record
// return to it only after the join (ScopedHeldFrees, device.h), so no branch's launches see
// their memory handed to another. Elsewhere (no capture) runs the branches in order on this
// thread's launch stream. Returns the first error of a branch or of the fork and join.
absl::Status RunConcurrently(absl::Span<const std::function<absl::Status()>> branches);

}  // namespace v4rl::kernels::cuda
