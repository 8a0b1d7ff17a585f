// Backward of the row-wise and elementwise CUDA ops of kernels/cuda/elementwise.h, against the CPU
// references of kernels/cpu/elementwise_backward.h (gpu tests: tests/kernels/
// cuda_backward_test.cc). Inputs bf16|f32 storage, fp32 arithmetic; gradients named dx / dgate /
// dup / dweight are ADDED to (the caller zeroes them), as on the CPU.
// Every launcher validates its views and returns InvalidArgument on a mismatch.
// Thread-safety: reentrant; work is queued on the launch stream (stream.h).
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// Backward of y = x / sqrt(mean(x²) + eps) ⊙ weight, recomputing the row statistic from x.
// x, dy: [M, D] bf16|f32 row views; weight: [D] bf16|f32 contiguous or empty (unweighted);
// dx: [M, D] bf16|f32 row view, += dL/dx (must not alias x or dy);
// dweight: [D] f32 contiguous or empty, += Σ_rows dy ⊙ x / rms (deterministic: fixed row order).
absl::Status RmsNormBackward(const core::TensorView& x, const core::TensorView& weight, float eps,
                             const core::TensorView& dy, const core::TensorView& dx,
                             const core::TensorView& dweight);

// How RmsNormBackward writes dx: kAdd adds to it (as above); kOverwrite stores 0.0f + dL/dx
// without reading dx (the same bits as kAdd on a zeroed dx, without the zero fill and the read:
// for a fresh, uninitialised dx, e.g. a bf16 one that only a GEMM reads).
enum class DxWrite { kAdd, kOverwrite };
absl::Status RmsNormBackward(const core::TensorView& x, const core::TensorView& weight, float eps,
                             const core::TensorView& dy, const core::TensorView& dx,
                             const core::TensorView& dweight, DxWrite dx_write);

// Backward of ApplyRope(x, cos, sin, inverse): the gradient rotated back in place by the
// conjugate angle (a rotation is orthogonal). grad as ApplyRope's x: dL/dy in, dL/dx out.
absl::Status RopeBackward(const core::TensorView& grad, const core::TensorView& cos,
                          const core::TensorView& sin, bool inverse);

// Backward of out = silu(min(gate, limit)) · clamp(up, ±limit) (limit <= 0: no clamp); a clamped
// input gets zero gradient. gate, up, dy: [M, I] bf16|f32 row views; dgate, dup: [M, I]
// bf16|f32 row views, += their gradients (distinct from the inputs and from each other), or with
// DxWrite::kOverwrite = them (not read, no zero fill needed). 16-byte rows with I % 8 == 0 go
// eight columns a thread.
absl::Status SwiGluClampBackward(const core::TensorView& gate, const core::TensorView& up,
                                 float limit, const core::TensorView& dy,
                                 const core::TensorView& dgate, const core::TensorView& dup);
absl::Status SwiGluClampBackward(const core::TensorView& gate, const core::TensorView& up,
                                 float limit, const core::TensorView& dy,
                                 const core::TensorView& dgate, const core::TensorView& dup,
                                 DxWrite write);

}  // namespace v4rl::kernels::cuda
