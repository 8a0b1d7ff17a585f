// The sm_90a TMA + wgmma grouped GEMM behind GroupedGemmTile::kWgmma (grouped_gemm.h; the kernel
// and its design are in grouped_gemm_wgmma.cu). Internal to kernels/cuda/: GroupedGemmDeviceOffsets
// validates the views (dtypes, ranks, shapes, contiguity) and then calls these.
// Thread-safety: reentrant; the launch stream (stream.h).
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// Whether the kernel serves x [R, K] and w [E, N, K] (both bf16, already validated): K a positive
// multiple of 64, N a multiple of 128, 16-byte aligned data, and the current device of compute
// capability 9.0 (the only one that runs sm_90a code).
bool GroupedGemmWgmmaApplies(const core::TensorView& x, const core::TensorView& w);

// out[r] = x[r] · w[e]ᵀ for r in [offsets[e], offsets[e + 1]) (views as GroupedGemmDeviceOffsets
// takes them); rows from offsets[E] on are left untouched. Builds the two TMA tensor maps from
// the views on the host (no allocation, nothing read from the device: graph-capturable).
// InvalidArgument where GroupedGemmWgmmaApplies is false or where E + floor(R / 128) (the grid's
// pass slots) exceeds 65535; Internal if the driver has no tensor-map encoder or rejects the maps.
absl::Status GroupedGemmWgmma(const core::TensorView& x, const core::TensorView& w,
                              const core::TensorView& offsets, const core::TensorView& out);

// The fused w1 / w3 / clamped SwiGLU instantiation (GroupedGemmSwiGluDeviceOffsets, which
// validates the views): applies to x [R, K] and w1, w3 [E, I, K] with K a positive multiple of
// 64, I a multiple of 64, 16-byte aligned data and a compute capability 9.0 device; otherwise
// GroupedGemmWgmmaSwiGlu is an InvalidArgument naming what is missing.
bool GroupedGemmWgmmaSwiGluApplies(const core::TensorView& x, const core::TensorView& w1,
                                   const core::TensorView& w3);
absl::Status GroupedGemmWgmmaSwiGlu(const core::TensorView& x, const core::TensorView& w1,
                                    const core::TensorView& w3, const core::TensorView& offsets,
                                    float limit, const core::TensorView& out);

// The input-gradient instantiation (GroupedGemmInputGradDeviceOffsets, which validates the views):
// dx[r] = dy[r] · w[e] (+ dy2[r] · w2[e] where w2 is not empty) for r in [offsets[e],
// offsets[e + 1]), dy, dy2 [R, N] bf16, w, w2 [E, N, K] bf16, dx [R, K] bf16|f32, overwritten;
// rows from offsets[E] on are left untouched. Applies with N a positive multiple of 64, K a
// multiple of 128, 16-byte aligned data and a compute capability 9.0 device; otherwise an
// InvalidArgument naming what is missing.
bool GroupedGemmWgmmaInputGradApplies(const core::TensorView& dy, const core::TensorView& w);
absl::Status GroupedGemmWgmmaInputGrad(const core::TensorView& dy, const core::TensorView& w,
                                       const core::TensorView& dy2, const core::TensorView& w2,
                                       const core::TensorView& offsets, const core::TensorView& dx);

// The experts' weight gradients on the sm_90a kernel of grouped_gemm_wgmma_dw.cu
// (GroupedGemmWeightGradDeviceOffsets validates the views): dw[e] = dy[rows of e]ᵀ · x[rows of e]
// for every expert e (zeros where it has no rows), dy [R, N] bf16, x [R, K] bf16, dw [E, N, K]
// f32, overwritten. Applies with N and K multiples of 128, 16-byte aligned data and a compute
// capability 9.0 device; otherwise an InvalidArgument naming what is missing.
bool GroupedGemmWgmmaWeightGradApplies(const core::TensorView& dy, const core::TensorView& x,
                                       const core::TensorView& dw);
absl::Status GroupedGemmWgmmaWeightGrad(const core::TensorView& dy, const core::TensorView& x,
                                        const core::TensorView& offsets,
                                        const core::TensorView& dw);

}  // namespace v4rl::kernels::cuda
