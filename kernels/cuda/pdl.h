// Programmatic dependent launch (PDL, sm_90 and later) of v4rl's kernels. Every kernel of
// kernels/cuda/ is queued by LaunchKernel (common.cuh) with the launch attribute "programmatic
// stream serialization", so the GPU may schedule it while the kernel before it on the stream is
// still running (a programmatic edge when a CudaGraph records it), and starts with
// WaitForPriorKernels(), which holds it until that kernel has finished and its writes are
// visible. In the decode step's graph, hundreds of short kernels a step thus overlap their launch
// and block scheduling with their predecessor's tail.
// Thread-safety: thread-safe.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace v4rl::kernels::cuda {

// Whether LaunchKernel sets the PDL attribute: yes unless the environment variable V4RL_CUDA_PDL
// is "0" (read once, at the first call; for A/B timings). Without the attribute every kernel
// starts after its predecessor ends, and WaitForPriorKernels() returns at once.
bool PdlEnabled();

// Shows whether a dependent kernel really starts before its predecessor ends (what lets the gpu
// test of PDL detect a kernel that reads before WaitForPriorKernels()). Queues two one-block
// kernels through LaunchKernel on the launch stream (stream.h; a CudaGraph may record them):
// the first spins for `spin_ns` nanoseconds after its WaitForPriorKernels() and then sets
// flags[0] = 1; the second copies flags[0] to flags[1] BEFORE its own WaitForPriorKernels() (the
// mistake the hook exists to prevent) and to flags[2] after it. flags: 3 int32 in device memory,
// zeroed by the caller. When the stream is done, flags[2] is 1; flags[1] is 0 if the second
// kernel started early (PDL on and honoured), 1 if it started after the first ended.
absl::Status PdlProbe(int32_t* flags, int64_t spin_ns);

}  // namespace v4rl::kernels::cuda
