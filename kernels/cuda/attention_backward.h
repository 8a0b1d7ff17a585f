// Backward of V4's sparse multi-query attention with sinks (kernels/cuda/attention.h) on the GPU,
// flash-style: the probabilities are recomputed from the forward's saved log-sum-exp (lse, sink
// included) and output, so no [queries, keys] matrix is stored: for query i, head h, key k
//   p_k = exp(scale·q·k - lse),  D = dout·out,  ds_k = p_k (dout·k - D)
//   dq += scale Σ_k ds_k k;  dkey_k += scale·ds_k·q + p_k·dout (K = V);  dsink_h += -p_sink·D.
// Same key sets as the forward and kernels/cpu/attention_backward.h (the reference): window rows
// in position order, then comp_idx's entries (ids outside [0, num_comp) skipped) or every visible
// compressed entry.
//
// Two kernels. By default the `reference`-precision one: CUDA-core fp32 arithmetic on bf16|f32
// inputs, one block per query with a warp per head (num_heads <= 32, head_dim <= 512), key-row
// gradients summed over the block's heads and then added with fp32 atomics. With tensor_cores
// (bf16 q, kv, comp_kv and dout; head_dim % 32 == 0 and <= 512; rows 16-byte aligned) the
// products run on mma.sync tiles as the forward's tensor-core kernel (attention_backward_tc.cu):
// P and dS rounded to bf16 for the second products, fp32 accumulation; a block walks its query's
// key tiles from tile (query % tiles) on, a fixed order; where the picks, counted with
// multiplicity, cover at least half of the compressed entries, or there are no picks
// (SharedKeyListApplies), consecutive queries share a block, its key rows and their key-row
// gradient atomics: four at head_dim 512 (attention_backward_quad_tc.cu), two otherwise
// (attention_pair.cuh).
// Either way dkv / dcomp_kv / dsink are not bit-reproducible run to run (fp32 atomics, in arrival
// order); dq is.
// Gradients are ADDED to (the caller zeroes them). Thread-safety: reentrant; the launch stream
// (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

struct SparseAttentionBackwardArgs {
  core::TensorView q;         // [num_q, num_heads, head_dim] bf16|f32 contiguous
  core::TensorView kv;        // [num_kv, head_dim] bf16|f32 contiguous; row r at kv_pos0 + r
  core::TensorView comp_kv;   // optional [num_comp, head_dim] bf16|f32 contiguous
  core::TensorView comp_idx;  // optional [num_q, comp_topk] i32 contiguous
  core::TensorView sink;      // [num_heads] f32
  core::TensorView out;       // [num_q, num_heads, head_dim] bf16|f32: the forward's output
  core::TensorView lse;       // [num_q, num_heads] f32: the forward's log-sum-exp (sink included)
  core::TensorView dout;      // [num_q, num_heads, head_dim] bf16|f32
  core::TensorView dq;        // [num_q, num_heads, head_dim] f32, +=
  core::TensorView dkv;       // [num_kv, head_dim] f32, +=
  core::TensorView dcomp_kv;  // [num_comp, head_dim] f32, += (given iff comp_kv is)
  core::TensorView dsink;     // [num_heads] f32, += (or empty: not needed)
  int64_t q_pos0 = 0;
  int64_t kv_pos0 = 0;
  int64_t window = 0;
  int64_t comp_ratio = 0;
  float scale = 0.0f;
  bool tensor_cores = false;  // the bf16 tensor-core kernel (requirements above)
};

absl::Status SparseAttentionBackward(const SparseAttentionBackwardArgs& args);

}  // namespace v4rl::kernels::cuda
