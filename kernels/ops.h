// The ops the model calls: each validates its views (dtype, device, shapes, strides), then
// dispatches by device. Only the CPU references exist so far (kernels/cpu/); a CUDA path plugs
// in here per op once its kernel lands with a diff test against the reference (DESIGN.md §3).
//
// Views are core::TensorView. "Row views" are rank-2 [rows, cols] views whose last dimension is
// contiguous (rows may be strided), or contiguous views of any rank, flattened to
// [numel / last_dim, last_dim]. An optional view is one with data == nullptr.
// Shape or dtype mismatches are caller bugs (the model validates configs and inputs first), so
// they CHECK-fail with a message naming the op, the argument and both shapes.
// Thread-safety: reentrant; CPU ops run on the process pool (see ScopedOpsThreadPool).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels {

using core::TensorView;

// CPU ops run on core::ThreadPool::Default() unless a ScopedOpsThreadPool is alive: then on its
// pool (benchmarks comparing thread counts, callers that partition cores). Process-wide; not for
// concurrent use with different pools.
class ScopedOpsThreadPool {
 public:
  explicit ScopedOpsThreadPool(core::ThreadPool* pool);
  ScopedOpsThreadPool(const ScopedOpsThreadPool&) = delete;
  ScopedOpsThreadPool& operator=(const ScopedOpsThreadPool&) = delete;
  ~ScopedOpsThreadPool();

 private:
  core::ThreadPool* previous_;
};

// The pool CPU ops run on now (the live ScopedOpsThreadPool's, else ThreadPool::Default()), for
// other op families (kernels/backward_ops.h) and direct callers of the cpu/ references.
core::ThreadPool* OpsThreadPool();

// out = x · wᵀ. x: [M, K] f32 row view; w: [N, K] f32 row view; out: [M, N] f32 row view.
void Linear(const TensorView& x, const TensorView& w, const TensorView& out);

// out = x / sqrt(mean(x²) + eps) ⊙ weight, per row. x, out: [M, D] f32 row views (out may be x);
// weight: [D] f32, or optional (unweighted RMSNorm).
void RmsNorm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out);

// In-place interleaved RoPE on the trailing 2·cos.size(1) channels of every head.
// x: [M, num_heads, head_dim] f32 with a contiguous last dim; cos, sin: [M, rope_dim / 2] f32
// contiguous, row m holding the angles of x's row m. inverse: conjugate rotation.
void ApplyRope(const TensorView& x, const TensorView& cos, const TensorView& sin, bool inverse);

// Sparse MQA with sinks; see kernels/cpu/attention.h for the key set of each query.
struct SparseAttentionArgs {
  TensorView q;         // [num_q, num_heads, head_dim] f32 contiguous
  TensorView kv;        // [num_kv, head_dim] f32 contiguous; row r at position kv_pos0 + r
  TensorView comp_kv;   // optional [num_comp, head_dim] f32 contiguous
  TensorView comp_idx;  // optional [num_q, comp_topk] i32 contiguous, ascending, -1 = no entry
  TensorView sink;      // [num_heads] f32
  TensorView out;       // [num_q, num_heads, head_dim] f32 contiguous
  TensorView lse;       // optional [num_q, num_heads] f32 contiguous
  int64_t q_pos0 = 0;
  int64_t kv_pos0 = 0;
  int64_t window = 0;
  int64_t comp_ratio = 0;  // > 0 when comp_kv is given without comp_idx
  float scale = 0.0f;
};
void SparseAttention(const SparseAttentionArgs& args);

// Gated window pooling of the compressor; see kernels/cpu/compressor.h.
// kv, score: [num_windows · ratio, (overlap ? 2 : 1) · head_dim] f32 contiguous;
// out: [num_windows - first_entry, head_dim] f32 contiguous.
void CompressPool(const TensorView& kv, const TensorView& score, int64_t ratio, bool overlap,
                  int64_t first_entry, const TensorView& out);

// Lightning-indexer top-k for one sequence; see kernels/cpu/indexer.h.
// q: [num_q, heads, head_dim] f32; weights: [num_q, heads] f32; keys: [num_keys, head_dim] f32;
// topk_idx: [num_q, topk] i32 (ascending picks, -1 padding). All contiguous.
void IndexerTopK(const TensorView& q, const TensorView& weights, const TensorView& keys,
                 int64_t q_pos0, int64_t ratio, float score_scale, const TensorView& topk_idx);

// out = sqrt(softplus(x)). x, out: same-shape contiguous f32 (out may be x).
void SqrtSoftplus(const TensorView& x, const TensorView& out);

// out = silu(min(gate, limit)) · clamp(up, ±limit). gate, up, out: same-shape contiguous f32.
void SwiGluClamp(const TensorView& gate, const TensorView& up, float limit,
                 const TensorView& out);

// mHC coefficients from the RMS-normalised mixes. mixes: [N, (2+n)·n]; base: [(2+n)·n];
// scale: [3]; pre, post: [N, n]; comb: [N, n, n]. All f32 contiguous.
void MhcCoefficients(const TensorView& mixes, const TensorView& base, const TensorView& scale,
                     int64_t sinkhorn_iters, float eps, const TensorView& pre,
                     const TensorView& post, const TensorView& comb);

// hc_head gates. mixes: [N, n]; base: [n]; scale: [1]; pre: [N, n]. f32 contiguous.
void HcHeadPre(const TensorView& mixes, const TensorView& base, const TensorView& scale,
               float eps, const TensorView& pre);

// out = Σ_j pre[:, j] · streams[:, j]. streams: [N, n, H]; pre: [N, n]; out: [N, H].
void MhcCollapse(const TensorView& streams, const TensorView& pre, const TensorView& out);

// out[:, k] = post[:, k] · y + Σ_j comb[:, j, k] · streams[:, j]. streams, out: [N, n, H]
// (distinct buffers); y: [N, H]; post: [N, n]; comb: [N, n, n].
void MhcExpand(const TensorView& streams, const TensorView& y, const TensorView& post,
               const TensorView& comb, const TensorView& out);

}  // namespace v4rl::kernels
