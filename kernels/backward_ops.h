// The backward ops the model's Backward calls: each validates its views (dtype, device, shapes,
// strides), then dispatches by device, like kernels/ops.h does for the forward ops. Only the CPU
// references exist so far (kernels/cpu/*_backward.h, kernels/cpu/routing.h).
//
// Gradient outputs are ADDED to (the caller zeroes them once per step): an activation consumed by
// several ops, or a parameter used by several sequences, sums every contribution in place.
// Views follow ops.h: "row views" are rank-2 views with a contiguous last dimension or contiguous
// views of any rank flattened to [numel / last_dim, last_dim]; an optional view has data ==
// nullptr. Mismatches are caller bugs and CHECK-fail naming the op, the argument and the shapes.
// Thread-safety: reentrant; CPU ops run on OpsThreadPool() (kernels/ops.h).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace v4rl::kernels {

using core::TensorView;

// Backward of Linear (y = x · wᵀ). x: [M, K], w: [N, K], dy: [M, N] f32 row views.
// dx: optional [M, K] row view, += dy · w; dw: optional [N, K] row view, += dyᵀ · x.
void LinearBackward(const TensorView& x, const TensorView& w, const TensorView& dy,
                    const TensorView& dx, const TensorView& dw);

// Backward of RmsNorm. x, dy, dx: [M, D] f32 row views (dx distinct from x and dy);
// weight: [D] f32 or optional (unweighted); dweight: optional [D] f32, += Σ dy ⊙ x / rms.
void RmsNormBackward(const TensorView& x, const TensorView& weight, float eps, const TensorView& dy,
                     const TensorView& dx, const TensorView& dweight);

// Backward of ApplyRope, in place: grad holds dL/dy on entry and dL/dx on return.
// grad: [M, num_heads, head_dim] f32 with a contiguous last dim; cos, sin as in ApplyRope.
void ApplyRopeBackward(const TensorView& grad, const TensorView& cos, const TensorView& sin,
                       bool inverse);

// Backward of SparseAttention; the key sets are the forward's (see kernels/cpu/attention.h).
struct SparseAttentionBackwardArgs {
  TensorView q;         // [num_q, num_heads, head_dim] f32 contiguous
  TensorView kv;        // [num_kv, head_dim] f32 contiguous; row r at position kv_pos0 + r
  TensorView comp_kv;   // optional [num_comp, head_dim] f32 contiguous
  TensorView comp_idx;  // optional [num_q, comp_topk] i32 contiguous, -1 = no entry
  TensorView sink;      // [num_heads] f32
  TensorView dout;      // [num_q, num_heads, head_dim] f32 contiguous
  TensorView dq;        // [num_q, num_heads, head_dim] f32 contiguous, +=
  TensorView dkv;       // [num_kv, head_dim] f32 contiguous, +=
  TensorView dcomp_kv;  // [num_comp, head_dim] f32 contiguous, += (given iff comp_kv is)
  TensorView dsink;     // [num_heads] f32, +=
  int64_t q_pos0 = 0;
  int64_t kv_pos0 = 0;
  int64_t window = 0;
  int64_t comp_ratio = 0;  // > 0 when comp_kv is given without comp_idx
  float scale = 0.0f;
};
void SparseAttentionBackward(const SparseAttentionBackwardArgs& args);

// Backward of CompressPool. kv, score, dkv, dscore: [num_windows · ratio, (overlap ? 2 : 1) ·
// head_dim] f32 contiguous; dout: [num_windows - first_entry, head_dim] f32 contiguous.
void CompressPoolBackward(const TensorView& kv, const TensorView& score, int64_t ratio,
                          bool overlap, int64_t first_entry, const TensorView& dout,
                          const TensorView& dkv, const TensorView& dscore);

// Backward of SqrtSoftplus. x, dy, dx: same-shape contiguous f32; dx += dy · dy/dx.
void SqrtSoftplusBackward(const TensorView& x, const TensorView& dy, const TensorView& dx);

// Backward of SwiGluClamp. gate, up, dy, dgate, dup: same-shape contiguous f32.
void SwiGluClampBackward(const TensorView& gate, const TensorView& up, float limit,
                         const TensorView& dy, const TensorView& dgate, const TensorView& dup);

// MoE routing weights: weights = scores[picks] / (Σ scores[picks] + denom_eps) · route_scale.
// scores: [N, E] f32 contiguous; topk_idx: [N, k] i32 contiguous with ids in [0, E);
// weights: [N, k] f32 contiguous.
void RoutingWeights(const TensorView& scores, const TensorView& topk_idx, float route_scale,
                    float denom_eps, const TensorView& weights);
// Its backward: dweights [N, k]; dscores [N, E], += (only at the picks).
void RoutingWeightsBackward(const TensorView& scores, const TensorView& topk_idx, float route_scale,
                            float denom_eps, const TensorView& dweights, const TensorView& dscores);

// Backward of MhcCoefficients. mixes, dmixes: [N, (2+n)·n]; base, dbase: [(2+n)·n]; scale,
// dscale: [3]; dpre, dpost: [N, n]; dcomb: [N, n, n]. All f32 contiguous.
void MhcCoefficientsBackward(const TensorView& mixes, const TensorView& base,
                             const TensorView& scale, int64_t sinkhorn_iters, float eps,
                             const TensorView& dpre, const TensorView& dpost,
                             const TensorView& dcomb, const TensorView& dmixes,
                             const TensorView& dbase, const TensorView& dscale);

// Backward of HcHeadPre. mixes, dpre, dmixes: [N, n]; base, dbase: [n]; scale, dscale: [1].
void HcHeadPreBackward(const TensorView& mixes, const TensorView& base, const TensorView& scale,
                       const TensorView& dpre, const TensorView& dmixes, const TensorView& dbase,
                       const TensorView& dscale);

// Backward of MhcCollapse. streams, dstreams: [N, n, H]; pre, dpre: [N, n]; dout: [N, H].
void MhcCollapseBackward(const TensorView& streams, const TensorView& pre, const TensorView& dout,
                         const TensorView& dstreams, const TensorView& dpre);

// Backward of MhcExpand. streams, dout, dstreams: [N, n, H] (dstreams distinct from dout);
// y, dy: [N, H]; post, dpost: [N, n]; comb, dcomb: [N, n, n].
void MhcExpandBackward(const TensorView& streams, const TensorView& y, const TensorView& post,
                       const TensorView& comb, const TensorView& dout, const TensorView& dstreams,
                       const TensorView& dy, const TensorView& dpost, const TensorView& dcomb);

}  // namespace v4rl::kernels
