// Backward of the mHC arithmetic on the GPU (kernels/cpu/mhc_backward.h is the reference): the
// pre/post gates and the Sinkhorn projection (recomputed per token and reversed through every
// row/column normalisation), the hc_head gate, the collapse Σ_j pre_j·X_j and the expand-and-mix
// out_k = post_k·y + Σ_j comb[j][k]·X_j, and MhcStreamsBackward: a site's whole stream gradient
// (the expand's, the collapse's and the mixes' normed · fnᵀ through the stream RMS) in one pass.
// n = hc_mult <= 4 (kMaxHcMult), sinkhorn iters <= 32. Coefficients and every gradient f32;
// streams, y and dout bf16|f32. Gradients are ADDED to (the caller zeroes them) unless a
// DxWrite::kOverwrite overload says otherwise; parameter
// gradients (dbase, dscale) are summed over tokens by a fixed-order block reduction
// (deterministic). Thread-safety: reentrant; the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/cuda/elementwise_backward.h"  // DxWrite

namespace v4rl::kernels::cuda {

// mixes: [N, (2+n)·n] f32; base: [(2+n)·n]; scale: [3]; dpre, dpost: [N, n]; dcomb: [N, n, n];
// dmixes: [N, (2+n)·n] +=; dbase: [(2+n)·n] +=; dscale: [3] +=. n is dpre's second dimension.
absl::Status MhcCoefficientsBackward(const core::TensorView& mixes, const core::TensorView& base,
                                     const core::TensorView& scale, int64_t sinkhorn_iters,
                                     float eps, const core::TensorView& dpre,
                                     const core::TensorView& dpost, const core::TensorView& dcomb,
                                     const core::TensorView& dmixes, const core::TensorView& dbase,
                                     const core::TensorView& dscale);

// hc_head: pre = sigmoid(scale[0]·m + base) + eps. mixes, dpre, dmixes: [N, n]; base, dbase: [n];
// scale, dscale: [1].
absl::Status HcHeadPreBackward(const core::TensorView& mixes, const core::TensorView& base,
                               const core::TensorView& scale, const core::TensorView& dpre,
                               const core::TensorView& dmixes, const core::TensorView& dbase,
                               const core::TensorView& dscale);

// The stream gradient of one mHC site, whole, in one pass (mhc_streams_backward.cu): the expand's
// Σ_k comb[t, j, k]·dout[t, k], the collapse's pre[t, j]·dcollapsed[t] and the backward of
// mixes = RMSNorm(flattened streams)·fnᵀ (RMSNorm without weight, eps folded into rms_inv),
// written over dstreams (not read). For hc_head: no dout and comb, n mixes.
struct MhcStreamsBackwardArgs {
  core::TensorView streams;     // [N, n, H] bf16|f32 contiguous, the site's input
  core::TensorView dout;        // [N, n, H] f32: the site output's gradient (hc_head: empty)
  core::TensorView comb;        // [N, n, n] f32 (hc_head: empty)
  core::TensorView pre;         // [N, n] f32
  core::TensorView dcollapsed;  // [N, H] f32
  core::TensorView fn;          // [M, n·H] f32, M = (2+n)·n (hc_head: n)
  core::TensorView dmixes;      // [N, M] f32
  core::TensorView mixes;       // [N, M] f32, the forward's normed · fnᵀ
  core::TensorView rms_inv;     // [N] f32: 1/sqrt(mean(x̄²) + eps), MhcExpandBackward's output
  core::TensorView dstreams;    // [N, n, H] f32 out, overwritten
};
absl::Status MhcStreamsBackward(const MhcStreamsBackwardArgs& args);

// out[t] = Σ_j pre[t, j]·streams[t, j]: streams [N, n, H] bf16|f32; pre [N, n] f32; dout [N, H]
// bf16|f32; dstreams [N, n, H] f32 += (DxWrite::kOverwrite: = 0.0f + the gradient, dstreams not
// read: no zero fill needed), each element one FMA of pre and dout, or an empty view: the stream
// gradient left to the caller (MhcStreamsBackward); dpre [N, n] f32 +=. rms_inv: optional [N] f32
// out, 1/sqrt(mean of the token's n·H stream values² + rms_eps) from the same read of the streams
// (what MhcStreamsBackward takes).
absl::Status MhcCollapseBackward(const core::TensorView& streams, const core::TensorView& pre,
                                 const core::TensorView& dout, const core::TensorView& dstreams,
                                 const core::TensorView& dpre);
absl::Status MhcCollapseBackward(const core::TensorView& streams, const core::TensorView& pre,
                                 const core::TensorView& dout, const core::TensorView& dstreams,
                                 const core::TensorView& dpre, DxWrite dstreams_write,
                                 const core::TensorView& rms_inv = {}, float rms_eps = 0.0f);

// out[t, k] = post[t, k]·y[t] + Σ_j comb[t, j, k]·streams[t, j]: streams, dout [N, n, H]
// bf16|f32; y [N, H] bf16|f32; post [N, n] f32; comb [N, n, n] f32. Added to: dstreams
// [N, n, H] f32 and dy [N, H] f32 (DxWrite::kOverwrite: both = 0.0f + the gradient, not read;
// dy may then be bf16, the f32 value rounded once, for a sublayer whose backward reads it only
// in matrix products), dpost [N, n] f32, dcomb [N, n, n] f32. dstreams may be an empty view
// (MhcStreamsBackward writes the stream gradient later); rms_inv: optional [N] f32 out, as
// MhcCollapseBackward's.
absl::Status MhcExpandBackward(const core::TensorView& streams, const core::TensorView& y,
                               const core::TensorView& post, const core::TensorView& comb,
                               const core::TensorView& dout, const core::TensorView& dstreams,
                               const core::TensorView& dy, const core::TensorView& dpost,
                               const core::TensorView& dcomb);
absl::Status MhcExpandBackward(const core::TensorView& streams, const core::TensorView& y,
                               const core::TensorView& post, const core::TensorView& comb,
                               const core::TensorView& dout, const core::TensorView& dstreams,
                               const core::TensorView& dy, const core::TensorView& dpost,
                               const core::TensorView& dcomb, DxWrite grads_write,
                               const core::TensorView& rms_inv = {}, float rms_eps = 0.0f);

}  // namespace v4rl::kernels::cuda
