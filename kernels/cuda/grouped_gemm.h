// Routed-expert GEMMs driven by device-side offsets (no host sync for the per-expert row counts):
// out[r] = x[r] · w[e]ᵀ for the rows r in [offsets[e], offsets[e + 1]) of every expert e, with
// offsets an i32 device array (kernels/cuda/moe.h BuildMoePlanOnDevice). bf16 inputs through
// tensor cores (WMMA 16x16x16), fp32 accumulation, bf16 or f32 output. One launch per call: a
// grid over (column tile, upper bound of the row tiles of all experts); blocks past the experts'
// real tiles return at once. Meant for the decode step's few rows per expert; the inference
// prefill keeps cuBLASLt per expert (GroupedGemm in gemm.h, host offsets), which is faster than
// the WMMA tiles on hundreds of rows; the training step's forward and backward take the Hopper
// kernels below (1.8x cuBLASLt per expert at 4,096 tokens, bench/cuda_moe_gemm_bench.cc).
// Tiles (rows of one expert x columns): 16x64 with six K tiles in flight for a few rows per expert
// (batch-1 and small-batch decode), 64x128 with three (bench/cuda_moe_gemm_bench.cc times them; on
// the H200 at the mid shapes 16x64 is fastest up to batch 64, 64x128 at batch 256, and a 64x64
// tile won nowhere). kWgmma is the Hopper kernel (grouped_gemm_wgmma.cu): TMA loads of 128 weight
// rows x 64 K into a multi-stage ring, one producer warp, two wgmma consumer warpgroups with the
// weights as the A operand and the expert's tokens (up to 128 a pass) as B. It needs K a positive
// multiple of 64, N a multiple of 128, 16-byte aligned x and w and a compute capability 9.0
// device; kAuto takes it wherever it applies, else 16x64 when the rows average at most 16 per
// expert, else 64x128. On the H200 at the mid shapes it was the fastest at batches 1, 64 and 256
// (bench/cuda_moe_gemm_bench.cc, batch 256: w1 41.8 µs = 3.44 TB/s, 0.83 of the copy bandwidth,
// against 54.7 µs for 64x128; w2 44.0 against 59.8).
// Thread-safety: reentrant; the launch stream (stream.h).
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

enum class GroupedGemmTile { kAuto, kSmall16x64, kWide64x128, kWgmma };

// x: [R, K] bf16 contiguous; w: [E, N, K] bf16 contiguous, E <= 1024; offsets: [E + 1] i32
// device, non-decreasing from 0 with offsets[E] <= R; out: [R, N] bf16|f32 contiguous. Rows from
// offsets[E] on are left untouched. InvalidArgument on a mismatch, or for kWgmma where it does not
// apply.
absl::Status GroupedGemmDeviceOffsets(const core::TensorView& x, const core::TensorView& w,
                                      const core::TensorView& offsets, const core::TensorView& out,
                                      GroupedGemmTile tile = GroupedGemmTile::kAuto);

// The decode step's gate, up and clamped SwiGLU in one launch of the Hopper kernel: out[r] =
// SwiGluClamp(bf16(x[r] · w1[e]ᵀ), bf16(x[r] · w3[e]ᵀ), limit) (elementwise.h) for the rows r in
// [offsets[e], offsets[e + 1]), the same bits as GroupedGemmDeviceOffsets into bf16 gate and up
// buffers followed by SwiGluClamp wherever those GEMMs take kWgmma (I a multiple of 128; the fused
// kernel's blocks of 64 gate and 64 up rows sum exactly as its blocks of 128 rows). x: [R, K]
// bf16; w1, w3: [E, I, K] bf16, E <= 1024; offsets as above; out: [R, I] bf16|f32; all contiguous.
// Rows from offsets[E] on are left untouched. InvalidArgument on a mismatch or where
// GroupedGemmSwiGluApplies is false (the caller then takes the three calls).
absl::Status GroupedGemmSwiGluDeviceOffsets(const core::TensorView& x, const core::TensorView& w1,
                                            const core::TensorView& w3,
                                            const core::TensorView& offsets, float limit,
                                            const core::TensorView& out);
// Whether GroupedGemmSwiGluDeviceOffsets serves x [R, K] and w1, w3 [E, I, K] (views it accepts):
// K a positive multiple of 64, I a multiple of 64, 16-byte aligned x, w1 and w3, a compute
// capability 9.0 device.
bool GroupedGemmSwiGluApplies(const core::TensorView& x, const core::TensorView& w1,
                              const core::TensorView& w3);

// Whether GroupedGemmDeviceOffsets runs x [R, K] · w [E, N, K]ᵀ (bf16 views it accepts) on the
// Hopper kernel (kAuto's pick): K a positive multiple of 64, N a multiple of 128, 16-byte aligned
// data, a compute capability 9.0 device. The training forward takes it there and cuBLASLt per
// expert elsewhere (on hundreds of rows an expert the WMMA tiles are slower than cuBLASLt).
bool GroupedGemmHopperApplies(const core::TensorView& x, const core::TensorView& w);

// The backward of GroupedGemmDeviceOffsets on the Hopper kernels, the training step's routed
// experts (offsets as above, i32 device, non-decreasing from 0, offsets[E] <= R):
//  - input gradients: dx[r] = dy[r] · w[e] + dy2[r] · w2[e] for r in [offsets[e], offsets[e + 1])
//    (dy2 and w2 empty views: the first term only; MoE's gate and up paths summed in one pass),
//    overwriting dx; rows from offsets[E] on are left untouched. dy, dy2: [R, N] bf16; w, w2:
//    [E, N, K] bf16; dx: [R, K] bf16|f32. Needs N a positive multiple of 64 and K a multiple of
//    128 (GroupedGemmInputGradApplies);
//  - weight gradients: dw[e] = Σ_{r of e} dy[r]ᵀ x[r], overwriting dw (zeros for an expert without
//    rows). dy: [R, N] bf16; x: [R, K] bf16; dw: [E, N, K] f32. Needs N and K multiples of 128
//    (GroupedGemmWeightGradApplies).
// All views contiguous device tensors; both need 16-byte aligned data and a compute capability
// 9.0 device. InvalidArgument naming the view on a mismatch or where they do not apply (the
// caller then takes cuBLAS: linear_backward.h GroupedLinearBackward).
absl::Status GroupedGemmInputGradDeviceOffsets(
    const core::TensorView& dy, const core::TensorView& w, const core::TensorView& dy2,
    const core::TensorView& w2, const core::TensorView& offsets, const core::TensorView& dx);
absl::Status GroupedGemmWeightGradDeviceOffsets(const core::TensorView& dy,
                                                const core::TensorView& x,
                                                const core::TensorView& offsets,
                                                const core::TensorView& dw);
bool GroupedGemmInputGradApplies(const core::TensorView& dy, const core::TensorView& w);
bool GroupedGemmWeightGradApplies(const core::TensorView& dy, const core::TensorView& x,
                                  const core::TensorView& dw);

}  // namespace v4rl::kernels::cuda
