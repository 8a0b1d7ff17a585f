// CPU reference backward of the linear layer y = x · wᵀ (kernels/cpu/linear.h): the input
// gradient dx = dy · w and the weight gradient dw = dyᵀ · x.
//
// Both gradients are ADDED to their outputs (llm.c's matmul_backward convention): an activation
// that feeds several projections, or a weight shared by several sequences, sums its gradients
// without extra buffers; the caller zeroes them once per step.
// Templated on the element type: float for training, double for the finite-difference checks.
// Thread-safety: reentrant; parallel over output rows through `pool` (nullptr = calling thread).
// Every output element is summed in one fixed order, so results do not depend on the thread
// count.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// x: [m, k] row stride ldx; w: [n, k] row stride ldw; dy: [m, n] row stride ldy.
// dx: [m, k] row stride lddx, += dy · w (nullptr: not needed).
// dw: [n, k] row stride lddw, += dyᵀ · x (nullptr: frozen weight).
// dx must not alias x, w or dy; dw must not alias x, w or dy.
template <typename T>
void LinearBackwardRef(const T* x, int64_t ldx, const T* w, int64_t ldw, const T* dy, int64_t ldy,
                       T* dx, int64_t lddx, T* dw, int64_t lddw, int64_t m, int64_t n, int64_t k,
                       core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
