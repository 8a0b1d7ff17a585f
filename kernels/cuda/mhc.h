// Manifold-constrained hyper-connections (spec §2.2-2.3) on the GPU, fused per token:
//  - MhcPre: RMS over the token's n·H stream values, the (2+n)·n mixes (normed · fnᵀ), the
//    pre/post gates and the Sinkhorn projection of comb, and the collapse Σ_j pre_j · X_j, in one
//    kernel (model/mhc.cc runs these as five CPU ops);
//  - HcHeadPre: the same for the final hc_head (n mixes, pre gate only, collapse);
//  - MhcPost: out_k = post_k · y + Σ_j comb[j][k] · X_j.
// fp32 arithmetic; streams, y and the outputs in bf16 or f32; coefficients in f32. Supports
// n = hc_mult <= 4 (the V4 models use 4). Validation errors return InvalidArgument.
// Thread-safety: reentrant; kernels go to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/cuda/gemm.h"

namespace v4rl::kernels::cuda {

inline constexpr int64_t kMaxHcMult = 4;

struct MhcPreArgs {
  core::TensorView streams;    // [N, n, H] bf16|f32 contiguous
  // fn: [M, n·H] f32|bf16 contiguous with M = (2+n)·n mixes (hc_head: n), or with fn_split the
  // [2·M, n·H] bf16 of SplitMhcFn (high parts, then low parts).
  core::TensorView fn;
  bool fn_split = false;
  core::TensorView base;       // [(2+n)·n] f32 (hc_head: [n])
  core::TensorView scale;      // [3] f32 (hc_head: [1])
  core::TensorView pre;        // [N, n] f32 out
  core::TensorView post;       // [N, n] f32 out (unused for hc_head)
  core::TensorView comb;       // [N, n, n] f32 out, comb[j][k] input j -> output k (not hc_head)
  core::TensorView collapsed;  // [N, H] bf16|f32 out
  // Optional [H] f32|bf16: collapsed = RMSNorm(collapse) · norm_weight with eps norm_eps, the
  // collapse rounded to collapsed's dtype first: what RmsNorm (elementwise.h) on the stored
  // collapse gives, in the same launch (bit for bit when RmsNorm would run 256 threads: H >= 1,800
  // with 8-wide access).
  core::TensorView norm_weight;
  float norm_eps = 1e-6f;      // rms_norm_eps of the stream RMSNorm (and of norm_weight's)
  float hc_eps = 1e-6f;        // eps of the gates and of Sinkhorn
  int64_t sinkhorn_iters = 20;
  // With a handle, bf16 streams and fn_split, the mixes' dot products run first as one cuBLASLt
  // GEMM (fp32 accumulation) into a [N, 2·M] f32 scratch; without, the fused kernel computes them
  // itself, each token reading all of fn (fine for a few tokens, slow for thousands).
  GemmHandle* gemm = nullptr;
};

// fn [M, K] f32 (host or any view) -> [2·M, K] bf16 host: rows [0, M) bf16(fn), rows [M, 2·M)
// bf16(fn - rows [0, M)). The sum of the two halves is fn within ~2^-16 relative, so a bf16 GEMM
// over the split keeps the f32 mixes of the reference.
core::Tensor SplitMhcFn(const core::TensorView& fn);
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
