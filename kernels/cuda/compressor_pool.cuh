// The compressor's gated pooling of one (entry, channel) (spec §3.4), shared by the kernels that
// pool entries (compressor.cu, and decode_graph.cu's appends that complete a window) so that they
// give the same bits: a softmax over the entry's slots of the gate scores (the max, then the sum
// of exponentials, then each weight divided by that sum) weighting the values, in fp32 and in slot
// order. Where a slot's value and score sit is the caller's: `offset(s)` is the element index of
// slot s in both kv and score (equal-shaped buffers).
// Include only from .cu files.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {

// kv, score: bf16 or f32 (per flag); slots 0 .. num_slots - 1. Returns the pooled value in fp32
// (callers round it with StoreF).
template <typename SlotOffset>
__device__ __forceinline__ float PoolChannel(const void* kv, bool kv_bf16, const void* score,
                                             bool score_bf16, int64_t num_slots,
                                             SlotOffset offset) {
  float mx = -INFINITY;
  for (int64_t s = 0; s < num_slots; ++s) mx = fmaxf(mx, LoadF(score, score_bf16, offset(s)));
  float denom = 0.0f;
  for (int64_t s = 0; s < num_slots; ++s) denom += expf(LoadF(score, score_bf16, offset(s)) - mx);
  float sum = 0.0f;
  for (int64_t s = 0; s < num_slots; ++s) {
    const int64_t off = offset(s);
    sum += LoadF(kv, kv_bf16, off) * (expf(LoadF(score, score_bf16, off) - mx) / denom);
  }
  return sum;
}

}  // namespace v4rl::kernels::cuda
