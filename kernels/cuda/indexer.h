// The lightning indexer (spec §3.5) on the GPU: scores I[t, s] = Σ_h w[t, h] · ReLU(q[t, h] · K[s])
// · score_scale over the entries a query may see, then the top-k entries per query in ascending
// id order with -1 padding, as kernels/cpu/indexer.h.
//
// Scoring runs per chunk of queries: one cuBLASLt GEMM gives the [chunk · heads, num_keys] dot
// products (bf16 in, fp32 accumulation), a kernel reduces them over heads; only a chunk's
// scores exist at a time (workspace below), never the whole [num_q, num_keys] matrix.
// Selection is an exact radix select per row on an order-preserving key of the f32 score, ties
// broken by the lower id (the total order of kernels/plan/topk.h; -0 equals +0; NaN ranks last):
// one block a row, or for at most 16 rows of more than 16,384 keys (decode at long context) each
// row spread over blocks of 2,048 keys (three histogram passes and an ordered emission pass; the
// cost depends on the row's length only, not on ties, NaN or -inf padding).
// Thread-safety: reentrant per GemmHandle; kernels go to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/cuda/gemm.h"

namespace v4rl::kernels::cuda {

struct IndexerTopKArgs {
  core::TensorView q;        // [num_q, heads, head_dim] bf16 contiguous (RoPE applied)
  core::TensorView weights;  // [num_q, heads] f32 contiguous (head weights, already scaled)
  core::TensorView keys;     // [num_keys, head_dim] bf16 contiguous (indexer compressed entries)
  core::TensorView topk_idx;   // [num_q, topk] i32 contiguous out
  core::TensorView workspace;  // f32 device, >= IndexerTopKWorkspaceFloats(...) elements
  int64_t q_pos0 = 0;
  int64_t ratio = 0;
  float score_scale = 0.0f;
  int64_t q_chunk = 16;  // queries scored per GEMM
};

// f32 elements of workspace IndexerTopK needs for `q_chunk` queries at a time.
int64_t IndexerTopKWorkspaceFloats(int64_t q_chunk, int64_t heads, int64_t num_keys);

absl::Status IndexerTopK(GemmHandle& handle, const IndexerTopKArgs& args);

// Selection alone: for row i the k best of scores[i, 0 .. visible_i) with
// visible_i = min(NumVisibleCompressed(q_pos0 + i, ratio), num_keys), ascending ids, -1 padding;
// all visible ids when visible_i <= k. scores: [num_q, num_keys] f32; topk_idx: [num_q, k] i32.
// Queues work on the launch stream only (a memset and kernels; scratch from
// CachingDeviceAllocator()), so a CUDA graph can record it.
absl::Status IndexerSelect(const core::TensorView& scores, int64_t q_pos0, int64_t ratio,
                           const core::TensorView& topk_idx);

}  // namespace v4rl::kernels::cuda
