// Small f32 forward kernels of the fp32 `reference` forward on the GPU (model/backward_cuda.h,
// CudaBackward::Forward) that the production kernels do not offer in the form the saved
// activations need, each the device twin of a CPU reference (named per launcher, same order of
// operations so results agree to fp32 rounding):
//  - MhcCoefficients: kernels/cpu/mhc.h MhcCoefficientsRef (gates and Sinkhorn from the saved
//    mixes; the fused kernels/cuda/mhc.h MhcPre computes its own mixes and saves neither them nor
//    the normalised streams). One thread a token, the CPU's left-to-right sums.
//  - HcHeadCoefficients: kernels/cpu/mhc.h HcHeadPreRef.
//  - MhcCollapse: kernels/cpu/mhc.h MhcCollapseRef, out[t] = Σ_j pre[t, j] · streams[t, j].
//  - IndexerHeadScores: the scoring loop of kernels/cpu/indexer.h IndexerTopKRef on dot products
//    computed beforehand by an f32 GEMM (kernels/cuda/indexer.h IndexerTopK takes bf16 only);
//    IndexerSelect then picks as the CPU.
// Every tensor is f32 device memory, contiguous. InvalidArgument naming the op and the tensor on
// a shape/dtype/device mismatch. Thread-safety: reentrant; kernels go to the launch stream
// (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// mixes: [N, (2+n)·n]; base: [(2+n)·n]; scale: [3] (alpha_pre, alpha_post, alpha_res);
// pre, post: [N, n] out; comb: [N, n, n] out. n <= 4 (kMaxHcMult), iters >= 1.
absl::Status MhcCoefficients(const core::TensorView& mixes, const core::TensorView& base,
                             const core::TensorView& scale, int64_t iters, float eps,
                             const core::TensorView& pre, const core::TensorView& post,
                             const core::TensorView& comb);

// pre = sigmoid(scale[0] · mixes + base) + eps. mixes, pre: [N, n]; base: [n]; scale: [1].
absl::Status HcHeadCoefficients(const core::TensorView& mixes, const core::TensorView& base,
                                const core::TensorView& scale, float eps,
                                const core::TensorView& pre);

// streams: [N, n, H] f32 or bf16 (the bf16 residual streams of bf16 GEMM math); pre: [N, n];
// out: [N, H] f32 (written).
absl::Status MhcCollapse(const core::TensorView& streams, const core::TensorView& pre,
                         const core::TensorView& out);

// scores[i, s] = Σ_h max(dots[i·heads + h, s], 0) · score_scale · weights[i, h], heads in order.
// dots: [num_q · heads, num_keys] (q · keysᵀ); weights: [num_q, heads]; scores: [num_q, num_keys].
absl::Status IndexerHeadScores(const core::TensorView& dots, const core::TensorView& weights,
                               float score_scale, const core::TensorView& scores);

}  // namespace v4rl::kernels::cuda
