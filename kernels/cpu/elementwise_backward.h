// CPU reference backward of the row normalisation, rotary embedding and MoE activations of
// kernels/cpu/elementwise.h.
//
// Conventions: input gradients named dx / dgate / dup are ADDED to (the caller zeroes them), so
// an activation consumed twice sums both contributions; parameter gradients (dweight) are added
// too. RMSNorm recomputes its row statistic from x instead of saving it: one pass over a row is
// cheaper than a saved [rows] buffer per norm, and keeps the saved-activation structs smaller.
// Templated on the element type: float for training, double for the finite-difference checks.
// Thread-safety: reentrant; row-parallel through `pool` (nullptr = calling thread); every output
// element is summed in a fixed order, so results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// Backward of y = x / sqrt(mean(x²) + eps) ⊙ weight (weight == nullptr: unweighted).
// x: [rows, dim] row stride ldx; dy: [rows, dim] row stride ldy;
// dx: [rows, dim] row stride lddx, += dL/dx (may not alias x or dy);
// dweight: [dim], += Σ_rows dy ⊙ x / rms (nullptr: not needed, or unweighted).
template <typename T>
void RmsNormBackwardRef(const T* x, int64_t ldx, const T* weight, T eps, const T* dy, int64_t ldy,
                        T* dx, int64_t lddx, T* dweight, int64_t rows, int64_t dim,
                        core::ThreadPool* pool);

// Backward of the in-place interleaved RoPE (RopeRef with the same `inverse`): a rotation is
// orthogonal, so the gradient is rotated back by the conjugate angle, in place.
// grad: the layout of RopeRef's x (element (r, h, c) at grad[r·row_stride + h·head_stride + c]);
// on entry dL/dy, on return dL/dx. Channels outside the rope slice pass through unchanged.
// cos, sin: [rows, rope_dim / 2].
template <typename T>
void RopeBackwardRef(T* grad, int64_t rows, int64_t num_heads, int64_t row_stride,
                     int64_t head_stride, int64_t head_dim, int64_t rope_dim, const T* cos,
                     const T* sin, bool inverse, core::ThreadPool* pool);

// Backward of y = sqrt(softplus(x)) (PyTorch's softplus: beta 1, linear above the threshold 20):
// dx += dy · softplus'(x) / (2·y). x, dy, dx: [n].
template <typename T>
void SqrtSoftplusBackwardRef(const T* x, const T* dy, T* dx, int64_t n);

// Backward of y = silu(min(gate, limit)) · clamp(up, -limit, limit) (limit <= 0: no clamp).
// A clamped input gets zero gradient (PyTorch's clamp passes the gradient only inside
// [min, max], bounds included). gate, up, dy: [n]; dgate, dup: [n], += their gradients.
template <typename T>
void SwiGluClampBackwardRef(const T* gate, const T* up, T limit, const T* dy, T* dgate, T* dup,
                            int64_t n);

}  // namespace v4rl::kernels::cpu
