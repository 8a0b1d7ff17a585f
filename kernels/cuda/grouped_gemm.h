// Routed-expert GEMMs driven by device-side offsets (no host sync for the per-expert row counts):
// out[r] = x[r] · w[e]ᵀ for the rows r in [offsets[e], offsets[e + 1]) of every expert e, with
// offsets an i32 device array (kernels/cuda/moe.h BuildMoePlanOnDevice). bf16 inputs through
// tensor cores (WMMA 16x16x16), fp32 accumulation, bf16 or f32 output. One launch per call: a
// grid over (column tile, upper bound of the row tiles of all experts); blocks past the experts'
// real tiles return at once. Meant for the decode step's few rows per expert; the prefill keeps
// cuBLASLt per expert (GroupedGemm in gemm.h), which is faster on hundreds of rows.
// Thread-safety: reentrant; default stream.
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// x: [R, K] bf16 contiguous; w: [E, N, K] bf16 contiguous; offsets: [E + 1] i32 device,
// non-decreasing from 0 with offsets[E] <= R; out: [R, N] bf16|f32 contiguous. Rows from
// offsets[E] on are left untouched. InvalidArgument on a mismatch.
absl::Status GroupedGemmDeviceOffsets(const core::TensorView& x, const core::TensorView& w,
                                      const core::TensorView& offsets, const core::TensorView& out);

}  // namespace v4rl::kernels::cuda
