// V4 sparse multi-query attention with sinks on the GPU (spec §3.1, §3.3-3.6), flash-style: each
// block takes one query and a group of heads and walks the query's key set (its sliding window
// of raw KV, then its compressed entries) in tiles of keys, with an online softmax (running max,
// rescaled sum and accumulator) whose max starts at the sink. No score matrix is stored. Same key
// sets and sink semantics as kernels/cpu/attention.h; fp32 accumulation.
// Two kernels: with bf16 q/kv/comp_kv, head_dim % 32 == 0 and <= 512 (V4's 512 included), both
// products run on tensor cores (mma.sync bf16, 16 heads per block, 64-key tiles; probabilities
// rounded to bf16 for P·V as flash attention does; at head_dim 512 four consecutive queries share
// a block and its key tiles where SharedKeyListApplies holds, attention_quad_tc.cu); otherwise
// CUDA-core fp32 dot products.
// Thread-safety: reentrant; the kernel goes to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

struct SparseAttentionArgs {
  core::TensorView q;         // [num_q, num_heads, head_dim] bf16|f32 contiguous
  core::TensorView kv;        // [num_kv, head_dim] bf16|f32 contiguous; row r at kv_pos0 + r
  core::TensorView comp_kv;   // optional [num_comp, head_dim] bf16|f32 contiguous
  core::TensorView comp_idx;  // optional [num_q, comp_topk] i32 contiguous; -1 (and ids outside
                              // [0, num_comp)) are skipped
  core::TensorView sink;      // [num_heads] f32
  core::TensorView out;       // [num_q, num_heads, head_dim] bf16|f32 contiguous
  core::TensorView lse;       // optional [num_q, num_heads] f32 (log-sum-exp incl. the sink)
  int64_t q_pos0 = 0;
  int64_t kv_pos0 = 0;
  int64_t window = 0;
  int64_t comp_ratio = 0;  // > 0 when comp_kv is given without comp_idx
  float scale = 0.0f;
};

// InvalidArgument when a view does not fit (shapes, dtypes, the last query's window outside the
// raw rows, head_dim > 1024).
absl::Status SparseAttention(const SparseAttentionArgs& args);

}  // namespace v4rl::kernels::cuda
