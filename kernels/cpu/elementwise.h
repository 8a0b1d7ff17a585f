// CPU references for row-wise normalisation, rotary embedding and the MoE activations, fp32.
// Templated on the element type: float for the model, double for the finite-difference checks
// of the backward passes (kernels/cpu/elementwise_backward.h).
// Thread-safety: reentrant; row-parallel through `pool` (nullptr = calling thread). Every output
// element is computed in a fixed order, so results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight (weight == nullptr: unweighted).
// x: [rows, dim] row stride ldx; weight: [dim]; out: [rows, dim] row stride ldo (may equal x).
template <typename T>
void RmsNormRef(const T* x, int64_t ldx, const T* weight, T eps, T* out, int64_t ldo, int64_t rows,
                int64_t dim, core::ThreadPool* pool);

// In-place interleaved RoPE on the trailing `rope_dim` channels of each head (spec §3.2): pair i
// is channels (head_dim - rope_dim + 2i, +1); y0 = x0·cos - x1·sin, y1 = x1·cos + x0·sin.
// `inverse` rotates by the conjugate angle (sin negated), the output de-rotation of §3.1.
// x: rows of `num_heads` heads, element (r, h, c) at x[r·row_stride + h·head_stride + c];
// cos, sin: [rows, rope_dim / 2], the angles of each row's position.
template <typename T>
void RopeRef(T* x, int64_t rows, int64_t num_heads, int64_t row_stride, int64_t head_stride,
             int64_t head_dim, int64_t rope_dim, const T* cos, const T* sin, bool inverse,
             core::ThreadPool* pool);

// out = sqrt(softplus(x)) elementwise (softplus with beta 1, threshold 20 as PyTorch). [n].
template <typename T>
void SqrtSoftplusRef(const T* x, T* out, int64_t n);

// out = silu(min(gate, limit)) · clamp(up, -limit, limit) elementwise; limit <= 0 disables the
// clamp. gate, up, out: [n] (out may alias gate or up).
template <typename T>
void SwiGluClampRef(const T* gate, const T* up, T limit, T* out, int64_t n);

}  // namespace v4rl::kernels::cpu
