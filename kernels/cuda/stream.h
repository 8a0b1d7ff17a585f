// The stream that this thread's v4rl launches, copies and cuBLASLt GEMMs go to: the legacy
// default stream, unless a ScopedStream on this thread names another (CudaGraph (graph.h) points
// it at its capture stream while it records a decode step). Every kernel of kernels/cuda/
// launches on CurrentStream() (common.cuh: LaunchStream()); the BLAS lanes (blas.h) keep their
// own streams.
// Thread-safety: the setting is per thread.
#pragma once

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

}  // namespace v4rl::kernels::cuda
