// The key list of the query-pair attention backward (attention_backward_pair_tc.cu): a block
// takes two consecutive queries, a group of four warps each (attention_tile.cuh), and walks one
// key list for both, plan::SharedKeySlots: the union of their windows' raw rows, then compressed
// entries [0, n) — every visible entry of the later query, or with picks every entry up to the
// largest picked, each query's picks counted in shared memory. Each key row is gathered once for
// both queries and its gradient row takes one set of atomics for both; a query takes a key at
// its weight (plan::SharedSlotWeight: 0 for the other's keys, the pick count for entries), so it
// computes scores for keys it does not see too. Worth it where the picks cover much of the
// entries (SharedKeyListApplies); at long contexts the one-query kernel gathers each query's picks.
// (A forward built the same way ran slower than the one-query forward: H200, mid config, 4K and
// 16K prefill 5% and 12% longer, two blocks of four warps a SM beating one of eight in step.)
// Include only from .cu files.
#pragma once

#include <cstdint>

#include "kernels/cuda/attention_quad_tc.h"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {

constexpr int kPairQueries = 2;
constexpr int kPairThreads = kPairQueries * kTcThreads;
constexpr int kPairMaxPickedEntries = static_cast<int>(kSharedKeysMaxPickedEntries);

// Block blockIdx.x's queries (2·blockIdx.x and the next, if any) and their shared key slots.
struct PairBlock {
  plan::SharedKeySlots slots;
  int64_t query[kPairQueries];     // query index
  int64_t position[kPairQueries];  // its absolute position
  bool active[kPairQueries];       // false: past num_q (its group computes at weight 0)
};

// Query q's facts (selects, not a dynamic index: the arrays stay in registers).
__device__ __forceinline__ bool PairActive(const PairBlock& b, int q) {
  return q == 0 ? b.active[0] : b.active[1];
}
__device__ __forceinline__ int64_t PairQuery(const PairBlock& b, int q) {
  return q == 0 ? b.query[0] : b.query[1];
}
__device__ __forceinline__ int64_t PairPosition(const PairBlock& b, int q) {
  return q == 0 ? b.position[0] : b.position[1];
}

// Sets up the block: with picks, counts[q · kPairMaxPickedEntries + e] = query q's picks of entry
// e (zeroed here) and the entries run to one past the largest pick (max_entry: a shared int).
// Called by every thread; ends synchronised.
__device__ inline PairBlock PairSetUp(const SharedKeyParams& p, int* counts, int* max_entry) {
  PairBlock b;
  for (int q = 0; q < kPairQueries; ++q) {
    b.query[q] = int64_t{blockIdx.x} * kPairQueries + q;
    b.active[q] = b.query[q] < p.num_q;
    b.position[q] = p.q_pos0 + b.query[q];
  }
  const int64_t last = b.active[1] ? b.position[1] : b.position[0];
  int64_t entries = 0;
  if (p.has_comp && p.comp_idx == nullptr) {
    entries = Min64(plan::NumVisibleCompressed(last, p.comp_ratio), p.num_comp);
  } else if (p.has_comp) {
    for (int e = threadIdx.x; e < kPairQueries * kPairMaxPickedEntries; e += kPairThreads) {
      counts[e] = 0;
    }
    if (threadIdx.x == 0) *max_entry = 0;
    __syncthreads();
    const int q = threadIdx.x / kTcThreads;
    if (PairActive(b, q)) {
      const int32_t* picks = p.comp_idx + PairQuery(b, q) * p.comp_topk;
      for (int64_t s = TcGroupThread(); s < p.comp_topk; s += kTcThreads) {
        const int32_t e = picks[s];
        if (e >= 0 && e < p.num_comp) {
          atomicAdd(&counts[q * kPairMaxPickedEntries + e], 1);
          atomicMax(max_entry, e + 1);
        }
      }
    }
    __syncthreads();
    entries = *max_entry;
  }
  b.slots = plan::SharedSlots(b.position[0], last, p.window, p.kv_pos0, entries);
  __syncthreads();  // every thread has read max_entry before a caller reuses shared memory
  return b;
}

// Query q's weight for shared slot j (< b.slots.total()).
__device__ __forceinline__ int PairWeight(const SharedKeyParams& p, const PairBlock& b,
                                          const int* counts, int q, int64_t j) {
  if (!PairActive(b, q)) return 0;
  const bool picked_entry = j >= b.slots.num_window && p.comp_idx != nullptr;
  const int picks =
      picked_entry ? counts[q * kPairMaxPickedEntries + (j - b.slots.num_window)] : -1;
  return plan::SharedSlotWeight(b.slots, j, PairPosition(b, q), p.window, p.kv_pos0, picks,
                                p.comp_ratio, p.num_comp);
}

// Slot j's row: raw row first - kv_pos0 + j, or compressed entry j - num_window.
__device__ __forceinline__ int64_t PairRowIndex(const SharedKeyParams& p, const PairBlock& b,
                                                int64_t j, bool* compressed) {
  *compressed = j >= b.slots.num_window;
  return *compressed ? j - b.slots.num_window : b.slots.first - p.kv_pos0 + j;
}

}  // namespace v4rl::kernels::cuda
