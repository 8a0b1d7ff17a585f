// Manifold-constrained hyper-connections (spec §2.2-2.3) on the GPU, fused per token:
//  - MhcPre: RMS over the token's n·H stream values, the (2+n)·n mixes (normed · fnᵀ), the
//    pre/post gates and the Sinkhorn projection of comb, and the collapse Σ_j pre_j · X_j, in one
//    kernel (model/mhc.cc runs these as five CPU ops);
//  - HcHeadPre: the same for the final hc_head (n mixes, pre gate only, collapse);
//  - MhcPost: out_k = post_k · y + Σ_j comb[j][k] · X_j.
// fp32 arithmetic; streams, y and the outputs in bf16 or f32; coefficients in f32. Supports
// n = hc_mult <= 4 (the V4 models use 4). Validation errors return InvalidArgument.
// Thread-safety: reentrant; kernels go to the default stream.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

inline constexpr int64_t kMaxHcMult = 4;

struct MhcPreArgs {
  core::TensorView streams;    // [N, n, H] bf16|f32 contiguous
  core::TensorView fn;         // [(2+n)·n, n·H] f32|bf16 contiguous (hc_head: [n, n·H])
  core::TensorView base;       // [(2+n)·n] f32 (hc_head: [n])
  core::TensorView scale;      // [3] f32 (hc_head: [1])
  core::TensorView pre;        // [N, n] f32 out
  core::TensorView post;       // [N, n] f32 out (unused for hc_head)
  core::TensorView comb;       // [N, n, n] f32 out, comb[j][k] input j -> output k (not hc_head)
  core::TensorView collapsed;  // [N, H] bf16|f32 out
  float norm_eps = 1e-6f;      // rms_norm_eps of the stream RMSNorm
  float hc_eps = 1e-6f;        // eps of the gates and of Sinkhorn
  int64_t sinkhorn_iters = 20;
};
absl::Status MhcPre(const MhcPreArgs& args);
// hc_head: post, comb and sinkhorn_iters are ignored.
absl::Status HcHeadPre(const MhcPreArgs& args);

// out[:, k] = post[:, k] · y + Σ_j comb[:, j, k] · streams[:, j]. streams, out: [N, n, H]
// bf16|f32 contiguous, distinct buffers; y: [N, H] bf16|f32; post: [N, n] f32; comb: [N, n, n]
// f32.
absl::Status MhcPost(const core::TensorView& streams, const core::TensorView& y,
                     const core::TensorView& post, const core::TensorView& comb,
                     const core::TensorView& out);

}  // namespace v4rl::kernels::cuda
