// Backward of the linear layer y = x · wᵀ on the GPU through cuBLAS (kernels/cpu/linear_backward.h
// is the reference): dx += dy · w and dw += dyᵀ · x, both ADDED to (the caller zeroes them once
// per step), so an activation feeding several projections sums its gradients in place.
//
// Precisions: x, w, dy all f32 (the `reference` precision: exact f32 GEMMs, no TF32) or all bf16
// (`production`: bf16 tensor-core GEMMs, fp32 accumulation); dx and dw f32 or bf16 (f32 for
// accumulation across micro-batches). Thread-safety: as the BlasHandle.
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"

namespace v4rl::kernels::cuda {

// x: [m, k]; w: [n, k]; dy: [m, n]: rank-2 device row views (unit inner stride, any row stride);
// x is read only for dw and may be an empty view when dw is.
// dx: [m, k] or an empty view (data == nullptr: not needed); dw: [n, k] or empty (frozen).
// InvalidArgument on a shape or dtype mismatch, or when dx/dw alias an input.
absl::Status LinearBackward(BlasHandle& handle, const core::TensorView& x,
                            const core::TensorView& w, const core::TensorView& dy,
                            const core::TensorView& dx, const core::TensorView& dw);
// The same with overwrite_dx: dx = dy · w (GEMM beta 0: dx is not read, so it needs no zero
// fill; for a dx that this call alone writes, e.g. a fresh gradient), dw still added to; and
// with overwrite_dw as well dw = dyᵀ · x (dw not read; all zero when dy has no rows).
absl::Status LinearBackward(BlasHandle& handle, const core::TensorView& x,
                            const core::TensorView& w, const core::TensorView& dy,
                            const core::TensorView& dx, const core::TensorView& dw,
                            bool overwrite_dx);
absl::Status LinearBackward(BlasHandle& handle, const core::TensorView& x,
                            const core::TensorView& w, const core::TensorView& dy,
                            const core::TensorView& dx, const core::TensorView& dw,
                            bool overwrite_dx, bool overwrite_dw);

// Batched over experts (stacked weights): x[e], dy[e] are rows [offsets[e], offsets[e + 1]) of
// x [P, k] and dy [P, n]; w, dw: [E, n, k] contiguous. offsets: host, E + 1 non-decreasing
// entries from 0 to at most P (rows from offsets[E] on are neither read nor written, as the
// Hopper kernels of grouped_gemm.h leave them).
// The experts' GEMMs run on the handle's lanes (BlasHandle::Lane), several at once. dx is added
// to; dw too, or with overwrite_dw written (dw[e] = dy[e]ᵀ · x[e], zeros for an expert without
// rows): a dw this call alone writes needs no zero fill, and its GEMMs do not read it.
absl::Status GroupedLinearBackward(BlasHandle& handle, const core::TensorView& x,
                                   const core::TensorView& w, const core::TensorView& dy,
                                   const int64_t* offsets, const core::TensorView& dx,
                                   const core::TensorView& dw, bool overwrite_dw);

}  // namespace v4rl::kernels::cuda
