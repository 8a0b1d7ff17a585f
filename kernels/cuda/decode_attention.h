// Batched single-token decode kernels (model/decode_cuda.h): one launch serves every sequence of
// a decode step, each query reading its own sequence's cache in place.
//  - DecodeAttention: sparse attention with the sink (semantics of attention.h / kernels/cpu/
//    attention.h) for one query per item over its sliding window (the ring slots of positions
//    t - min(t, window - 1) .. t - 1, then its own K=V row) and its compressed entries (the picks,
//    or all of them). One block per (item, 16 heads, key split) gathers 64 keys at a time into
//    shared memory (cp.async) and runs the tensor-core tile of the prefill kernel
//    (attention_tile.cuh: Q·Kᵀ and P·V on mma.sync, fp32 online softmax, P rounded to bf16);
//    few items (long-context single-stream decode) split each item's keys over enough blocks to
//    fill the device, and a second launch merges the splits with the sink (a block adds the
//    splits of a slice of output dims, up to 16 splits a round of loads, in a fixed order).
//  - DecodeIndexerScores: the indexer's scores Σ_h w[h] · ReLU(q[h] · K[e]) · score_scale of one
//    query per item over its first num_keys entries (tiles of 64 keys, double-buffered, a block
//    looping over several tiles when few items leave SMs idle; the logits on tensor cores in
//    fp32), written to row i of a [items, ld] f32 matrix and -inf beyond num_keys
//    (IndexerSelect with q_pos0 >= ld · ratio then picks the top-k of every row with the padding
//    ranked last).
// Items are host structs of device pointers, staged per call without a host sync
// (kernels/cuda/staging.h); the ...OnDevice entry points take items already in device memory
// (decode_graph.h builds them there) and are what a CUDA graph (graph.h) records: staging refuses
// during a capture, and a recorded launch must read what changes between replays from memory.
// bf16 only; head_dim % 32 == 0 and <= 512; queries and key rows (q, ring, own_kv, comp, indexer
// keys) 16-byte aligned (InvalidArgument otherwise from the span versions; the ...OnDevice
// versions cannot read their items and leave alignment to the caller).
// Thread-safety: the span versions one host thread at a time (shared staging buffer); kernels go
// to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace v4rl::kernels::cuda {

struct DecodeAttentionItem {
  const void* q = nullptr;       // [heads, head_dim] bf16
  const void* ring = nullptr;    // [window, head_dim] bf16, position p in slot p mod window
  const void* own_kv = nullptr;  // [head_dim] bf16: the query token's K=V
  const void* comp = nullptr;    // [num_comp, head_dim] bf16 or null
  const int32_t* comp_idx = nullptr;  // [comp_topk] picks (-1 / >= num_comp skipped) or null: all
  void* out = nullptr;           // [heads, head_dim] bf16
  int64_t position = 0;
  int64_t num_comp = 0;
  int64_t comp_topk = 0;
};

// sink: [heads] f32 device. InvalidArgument on unsupported sizes or misaligned rows.
absl::Status DecodeAttention(absl::Span<const DecodeAttentionItem> items, const float* sink,
                             int64_t heads, int64_t head_dim, int64_t window, float scale);

// DecodeAttention of `count` items in device memory (alignment unchecked: the caller's duty).
// max_keys (>= 1) bounds every item's key count min(position, window - 1) + 1 + (comp null ? 0 :
// comp_idx ? comp_topk : num_comp) and sets the key splits: with the largest item's count (what
// DecodeAttention computes from its items) the result is DecodeAttention's bit for bit; a larger
// bound (a graph recorded for later positions) may split keys differently, which changes the
// rounding (running maxima, partial sums), not the result's meaning. InvalidArgument on
// unsupported sizes, count < 0 or max_keys < 1.
absl::Status DecodeAttentionOnDevice(const DecodeAttentionItem* items, int64_t count,
                                     int64_t max_keys, const float* sink, int64_t heads,
                                     int64_t head_dim, int64_t window, float scale);

struct DecodeIndexerItem {
  const void* q = nullptr;        // [heads, head_dim] bf16 (rotated)
  const float* weights = nullptr;  // [heads] f32 (scaled head weights)
  const void* keys = nullptr;     // [num_keys, head_dim] bf16
  float* scores = nullptr;        // [ld] f32 row
  int64_t num_keys = 0;
};

// Item i's scores into its [ld] row. InvalidArgument on unsupported sizes or misaligned rows.
absl::Status DecodeIndexerScores(absl::Span<const DecodeIndexerItem> items, int64_t heads,
                                 int64_t head_dim, int64_t ld, float score_scale);

// DecodeIndexerScores of `count` items in device memory (alignment unchecked: the caller's duty);
// the same bits. InvalidArgument on unsupported sizes or count < 0.
absl::Status DecodeIndexerScoresOnDevice(const DecodeIndexerItem* items, int64_t count,
                                         int64_t heads, int64_t head_dim, int64_t ld,
                                         float score_scale);

}  // namespace v4rl::kernels::cuda
