#include <cstdlib>
#include <cstring>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pdl.h"

namespace v4rl::kernels::cuda {
namespace {

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

// One thread: after the hook, spins for spin_ns, then publishes flags[0] = 1.
__global__ void ProbeSpinThenSetKernel(int32_t* flags, int64_t spin_ns) {
  WaitForPriorKernels();
  const uint64_t start = GlobalTimerNs();
  while (GlobalTimerNs() - start < static_cast<uint64_t>(spin_ns)) {
  }
  *reinterpret_cast<volatile int32_t*>(flags) = 1;
  __threadfence();
}

// One thread: reads flags[0] before the hook (deliberately, see PdlProbe) and after it. The only
// kernel of kernels/cuda/ whose first statement is not WaitForPriorKernels().
__global__ void ProbeReadAroundWaitKernel(int32_t* flags) {
  volatile int32_t* shared_flags = flags;
  const int32_t before = shared_flags[0];
  WaitForPriorKernels();
  shared_flags[1] = before;
  shared_flags[2] = shared_flags[0];
}

}  // namespace

bool PdlEnabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("V4RL_CUDA_PDL");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

absl::Status PdlProbe(int32_t* flags, int64_t spin_ns) {
  LaunchKernel(ProbeSpinThenSetKernel, 1, 1, 0, flags, spin_ns);
  LaunchKernel(ProbeReadAroundWaitKernel, 1, 1, 0, flags);
  return LaunchStatus("cuda::PdlProbe");
}

}  // namespace v4rl::kernels::cuda
