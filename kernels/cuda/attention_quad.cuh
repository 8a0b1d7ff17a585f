// The key list of the four-query attention kernels (attention_quad_tc.cu forward,
// attention_backward_quad_tc.cu backward): a block of kQuadThreads threads takes four consecutive
// queries and walks one key list for all of them, plan::SharedKeySlots: the union of their
// windows' raw rows, then compressed entries [0, n) — every entry the last query sees, or with
// picks every entry up to the largest pick, each query's picks counted in shared memory. A query
// takes a key at its weight (plan::SharedSlotWeight: 0 outside its set, the pick count for an
// entry). Blocks take their queries from the end of the sequence (grid x reversed): the blocks
// with the most keys start first. Include only from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/attention_quad_tc.h"
#include "kernels/cuda/common.cuh"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {

constexpr int kQuadQueries = 4;
constexpr int kQuadWarps = 2 * kQuadQueries;  // two warps a query
constexpr int kQuadThreads = 32 * kQuadWarps;
constexpr int kQuadHeads = 16;
constexpr int kQuadKeys = 64;  // keys a tile
constexpr int kQuadD = static_cast<int>(kQuadHeadDim);
constexpr int kQuadStride = kQuadD + 8;  // bf16 elements between staged rows (bank padding)
constexpr int kQuadPieces = kQuadD / 8;  // 16-byte pieces a row

// Pick counts: entry e's picks by queries 2c and 2c + 1 in bits [0, 16) and [16, 32) of [e][c].
using QuadPickCounts = uint32_t[kSharedKeysMaxPickedEntries][kQuadQueries / 2];

struct QuadBlock {
  int64_t first_query, last_query;  // the block's queries (last_query - first_query < 4)
  plan::SharedKeySlots slots;
};

// Sets up the block (every thread calls it; ends synchronised when there are picks): the counts
// and max_entry are shared memory.
__device__ inline QuadBlock QuadSetUp(const SharedKeyParams& p, QuadPickCounts& counts,
                                      int* max_entry) {
  QuadBlock b;
  b.first_query = (int64_t{gridDim.x} - 1 - blockIdx.x) * kQuadQueries;
  b.last_query = Min64(b.first_query + kQuadQueries, p.num_q) - 1;
  const int tid = static_cast<int>(threadIdx.x);
  int64_t entries = 0;
  if (p.has_comp && p.comp_idx == nullptr) {
    entries = Min64(plan::NumVisibleCompressed(p.q_pos0 + b.last_query, p.comp_ratio), p.num_comp);
  } else if (p.has_comp) {
    uint32_t* flat = &counts[0][0];
    for (int e = tid; e < kSharedKeysMaxPickedEntries * kQuadQueries / 2; e += kQuadThreads)
      flat[e] = 0;
    if (tid == 0) *max_entry = 0;
    __syncthreads();
    for (int q = 0; q < kQuadQueries && b.first_query + q <= b.last_query; ++q) {
      const int32_t* picks = p.comp_idx + (b.first_query + q) * p.comp_topk;
      for (int64_t k = tid; k < p.comp_topk; k += kQuadThreads) {
        const int32_t e = picks[k];
        if (e >= 0 && e < p.num_comp) {
          atomicAdd(&counts[e][q / 2], 1u << (16 * (q % 2)));
          atomicMax(max_entry, e + 1);
        }
      }
    }
    __syncthreads();
    entries = *max_entry;
  }
  b.slots = plan::SharedSlots(p.q_pos0 + b.first_query, p.q_pos0 + b.last_query, p.window,
                              p.kv_pos0, entries);
  return b;
}

// Query q's (0-3) weight for shared slot j (< b.slots.total()); 0 past the last query.
__device__ __forceinline__ int QuadWeight(const SharedKeyParams& p, const QuadBlock& b,
                                          const QuadPickCounts& counts, int q, int64_t j) {
  if (b.first_query + q > b.last_query) return 0;
  int picks = -1;
  if (p.comp_idx != nullptr && j >= b.slots.num_window) {
    picks = static_cast<int>((counts[j - b.slots.num_window][q / 2] >> (16 * (q % 2))) & 0xffffu);
  }
  return plan::SharedSlotWeight(b.slots, j, p.q_pos0 + b.first_query + q, p.window, p.kv_pos0,
                                picks, p.comp_ratio, p.num_comp);
}

// Slot j's row index: raw row first - kv_pos0 + j, or compressed entry j - num_window.
__device__ __forceinline__ int64_t QuadRowIndex(const SharedKeyParams& p, const QuadBlock& b,
                                                int64_t j, bool* compressed) {
  *compressed = j >= b.slots.num_window;
  return *compressed ? j - b.slots.num_window : b.slots.first - p.kv_pos0 + j;
}

// Starts copying the 64 rows rows[0 .. 64) (null: a zero row) into keys [64][kQuadStride] with
// cp.async, one commit group: thread t keeps piece t % 64. `fallback`: any global address.
__device__ __forceinline__ void QuadStartGather(uint16_t (*keys)[kQuadStride],
                                                const uint16_t* const* rows, const void* fallback) {
  const int tid = static_cast<int>(threadIdx.x), v = tid % kQuadPieces;
#pragma unroll 4
  for (int key = tid / kQuadPieces; key < kQuadKeys; key += kQuadThreads / kQuadPieces) {
    const uint16_t* row = rows[key];
    CpAsync16(&keys[key][v * 8], row != nullptr ? row + v * 8 : fallback, row != nullptr);
  }
  CpAsyncCommit();
}

// Starts copying the rows of queries first_query + q (q < 4, up to last_query) and heads
// [h0, h0 + heads) of src [num_q, num_heads, 512] into dst[q][h] (zero rows elsewhere); the
// caller commits.
__device__ __forceinline__ void QuadLoadRows(uint16_t (*dst)[kQuadHeads][kQuadStride],
                                             const uint16_t* src, const QuadBlock& b,
                                             int64_t num_heads, int64_t h0, int heads) {
  for (int e = static_cast<int>(threadIdx.x); e < kQuadQueries * kQuadHeads * kQuadPieces;
       e += kQuadThreads) {
    const int q = e / (kQuadHeads * kQuadPieces), h = (e / kQuadPieces) % kQuadHeads;
    const int v = e % kQuadPieces;
    const bool valid = b.first_query + q <= b.last_query && h < heads;
    const uint16_t* row = src + ((b.first_query + q) * num_heads + h0 + h) * kQuadD + v * 8;
    CpAsync16(&dst[q][h][v * 8], valid ? row : src, valid);
  }
}

__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace v4rl::kernels::cuda
