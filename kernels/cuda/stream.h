// The stream that this thread's v4rl launches, copies and cuBLASLt GEMMs go to: the legacy
// default stream, unless a ScopedStream on this thread names another (CudaGraph (graph.h) points
// it at its capture stream while it records a decode step). Every kernel of kernels/cuda/
// launches on CurrentStream() (common.cuh: LaunchStream()); the BLAS lanes (blas.h) keep their
// own streams. A SideStream runs work beside the launch stream's next launches.
// Thread-safety: the setting is per thread; a SideStream one thread at a time.
#pragma once

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace v4rl::kernels::cuda {

// cudaStream_t of this thread's launches; nullptr: the legacy default stream.
void* CurrentStream();

// Sets this thread's launch stream for the scope's lifetime (restoring the previous one).
class ScopedStream {
 public:
  explicit ScopedStream(void* stream);
  ~ScopedStream();
  ScopedStream(const ScopedStream&) = delete;
  ScopedStream& operator=(const ScopedStream&) = delete;

 private:
  void* previous_;
};

// A second launch stream (non-blocking) for work that depends only on what this thread's launch
// stream has queued so far, e.g. the decode step's shared expert beside its router and routed
// experts. Fork(queue) makes the side wait for everything queued on the launch stream, then runs
// queue() (which only queues launches) with the side as this thread's launch stream; later
// launches on the launch stream may overlap with that work until Join() makes the launch stream
// wait for it. Inside a graph capture (graph.h) the side's work joins the capture as a parallel
// branch, so a forked capture must Join before it ends.
// Device memory the side's work uses must stay allocated until Join (the caching allocator hands
// a freed block to the launch stream's next allocation at once), and a GemmHandle (gemm.h) is
// one stream's at a time (its workspace): the side needs its own.
class SideStream {
 public:
  static absl::StatusOr<std::unique_ptr<SideStream>> Create();
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  // Internal on CUDA errors; FailedPrecondition while a fork awaits its Join. queue()'s error is
  // returned after the side's completion is recorded, so a Join still follows.
  absl::Status Fork(const std::function<absl::Status()>& queue);
  // No-op without a pending fork. Internal on CUDA errors.
  absl::Status Join();

 private:
  SideStream() = default;
  void* stream_ = nullptr;  // cudaStream_t
  void* forked_ = nullptr;  // cudaEvent_t: the launch stream's queue at Fork
  void* done_ = nullptr;    // cudaEvent_t: the side's queue after queue()
  bool pending_ = false;
};

}  // namespace v4rl::kernels::cuda
