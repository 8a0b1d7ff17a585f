// One entry of a RoPE table (cos and sin of position · inv_freq[i]), shared by the kernels that
// write RoPE tables (elementwise.cu's RopeTableKernel behind RopeTableFill / RopeTableAt, and
// decode_graph.cu's DecodeCompressAppend for its entries' rows) so that their tables hold the same
// bits: the decode step's graph path and its launch-by-launch path rotate the same entries with
// tables from different kernels, and must agree bit for bit.
// Include only from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace v4rl::kernels::cuda {

// {cos, sin} of the angle position · inv_freq: the f32 product with one rounding (no FMA
// contraction; as model/rope.cc's CPU table), then cos and sin in double, each rounded to f32.
__device__ __forceinline__ float2 RopeCosSin(int64_t position, float inv_freq) {
  const float angle = __fmul_rn(static_cast<float>(position), inv_freq);
  return make_float2(static_cast<float>(::cos(static_cast<double>(angle))),
                     static_cast<float>(::sin(static_cast<double>(angle))));
}

}  // namespace v4rl::kernels::cuda
