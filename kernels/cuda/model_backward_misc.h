// Small f32 backward kernels the whole-model CUDA backward (model/backward_cuda.h) needs beyond
// the per-op ones, each the device twin of a CPU loop (the reference named per launcher):
//  - RoutingWeightsBackward: kernels/cpu/routing.h RoutingWeightsBackwardRef (one thread a token).
//  - SqrtSoftplusBackward: kernels/cpu/elementwise_backward.h SqrtSoftplusBackwardRef.
//  - ExpertWeightBackward: the routing-weight step of model/moe_backward.cc (per pick p of slot s:
//    dweight[s] += <u_p, act_p>; u_p *= w_s) plus the weighted activation w_s·act_p for dw2.
//  - ApeBackward: compressor's positional bias, dape[j] += Σ_{rows r, (r mod T) mod ratio = j}
//    dscore[r] (model/compressor_backward.cc), summed in a fixed order of row chunks
//    (deterministic; AddColumnSums in common.cuh).
//  - AddRowSums: out += the column sums of rows, in row order (split-K partials).
//  - FillZero: x = 0 (device zeroing without CUDA headers in the caller).
//  - EmbeddingBackward: dembed[id_t] += Σ_j dstreams[t, j] (model/backward.cc); repeated ids are
//    summed with fp32 atomics (not bit-reproducible run to run).
// Every tensor is f32 (or i32 ids) device memory, contiguous, except where a declaration says
// otherwise; gradients are ADDED to.
// InvalidArgument on a shape/dtype/device mismatch. Thread-safety: reentrant; the launch stream
// (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// scores: [N, E]; topk_idx: [N, k] i32 in [0, E); dweights: [N, k]; dscores: [N, E] +=.
absl::Status RoutingWeightsBackward(const core::TensorView& scores,
                                    const core::TensorView& topk_idx, float route_scale,
                                    float denom_eps, const core::TensorView& dweights,
                                    const core::TensorView& dscores);

// x, dy, dx: same shape; dx += dy · softplus'(x) / (2·sqrt(softplus(x))).
absl::Status SqrtSoftplusBackward(const core::TensorView& x, const core::TensorView& dy,
                                  const core::TensorView& dx);

// act, u: [P, I] f32; weighted_act: [P, I] f32 or bf16 (one rounding, for a bf16 product);
// slots: [P] i32 (plan order, slot = token·k + j; -1: a row past the real picks, left as it is);
// topk_weight, dweight: [N, k] f32 (dweight +=). weighted_act = w·act (overwritten); u *= w in
// place.
absl::Status ExpertWeightBackward(const core::TensorView& act, const core::TensorView& slots,
                                  const core::TensorView& topk_weight, const core::TensorView& u,
                                  const core::TensorView& weighted_act,
                                  const core::TensorView& dweight);

// dscore: [B·T, width]; dape: [ratio, width] +=.
absl::Status ApeBackward(const core::TensorView& dscore, int64_t seq_len, int64_t ratio,
                         const core::TensorView& dape);

// out[c] += Σ_r rows[r, c], summed in row order (deterministic). rows: [R, N] f32; out: N
// elements f32 (any shape), contiguous.
absl::Status AddRowSums(const core::TensorView& rows, const core::TensorView& out);

// x: any contiguous f32 or bf16 device tensor, set to zero.
absl::Status FillZero(const core::TensorView& x);

// dstreams: [N, n, H]; ids: [N] i32 in [0, V); dembed: [V, H] +=.
absl::Status EmbeddingBackward(const core::TensorView& dstreams, const core::TensorView& ids,
                               const core::TensorView& dembed);

}  // namespace v4rl::kernels::cuda
