// V4RL_HOST_DEVICE marks index-math helpers in kernels/plan/ that the CPU reference and the CUDA
// kernels share: plain host functions here, __host__ __device__ under nvcc.
#pragma once

#if defined(__CUDACC__)
#define V4RL_HOST_DEVICE __host__ __device__
#else
#define V4RL_HOST_DEVICE
#endif
