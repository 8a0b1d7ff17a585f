// Routed-expert GEMMs driven by device-side offsets (no host sync for the per-expert row counts):
// out[r] = x[r] · w[e]ᵀ for the rows r in [offsets[e], offsets[e + 1]) of every expert e, with
// offsets an i32 device array (kernels/cuda/moe.h BuildMoePlanOnDevice). bf16 inputs through
// tensor cores (WMMA 16x16x16), fp32 accumulation, bf16 or f32 output. One launch per call: a
// grid over (column tile, upper bound of the row tiles of all experts); blocks past the experts'
// real tiles return at once. Meant for the decode step's few rows per expert; the prefill keeps
// cuBLASLt per expert (GroupedGemm in gemm.h), which is faster on hundreds of rows.
// Tiles (rows of one expert x columns): 16x64 with six K tiles in flight for a few rows per expert
// (batch-1 and small-batch decode), 64x128 with three; kAuto takes 16x64 when the rows average at
// most 16 per expert, else 64x128 (bench/cuda_moe_gemm_bench.cc times both; on the H200 at the
// mid shapes 16x64 is fastest up to batch 64, 64x128 at batch 256, and a 64x64 tile won nowhere).
// Thread-safety: reentrant; the launch stream (stream.h).
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

enum class GroupedGemmTile { kAuto, kSmall16x64, kWide64x128 };

// x: [R, K] bf16 contiguous; w: [E, N, K] bf16 contiguous, E <= 1024; offsets: [E + 1] i32
// device, non-decreasing from 0 with offsets[E] <= R; out: [R, N] bf16|f32 contiguous. Rows from
// offsets[E] on are left untouched. InvalidArgument on a mismatch.
absl::Status GroupedGemmDeviceOffsets(const core::TensorView& x, const core::TensorView& w,
                                      const core::TensorView& offsets, const core::TensorView& out,
                                      GroupedGemmTile tile = GroupedGemmTile::kAuto);

}  // namespace v4rl::kernels::cuda
