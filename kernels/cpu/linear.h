// CPU reference for the linear layer out = x · wᵀ (fp32 in, fp32 accumulation, fp32 out).
// Templated on the element type: float is the vectorised path below; double (plain dot products
// in index order) serves the finite-difference checks of the backward passes.
//
// Every output element is computed in one fixed order (8 lane-wise partial sums over K, summed
// pairwise, then the K % 8 tail), whichever tile or thread computes it; results are therefore
// bit-identical for any thread count and for any M (one decode row or a whole prefill).
// Thread-safety: reentrant; parallel over output tiles through `pool` (nullptr = calling thread).
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// x: [m, k] with row stride ldx; w: [n, k] with row stride ldw; out: [m, n] with row stride ldo.
// The k dimension is contiguous in x and w; out must not alias x or w.
template <typename T>
void LinearRef(const T* x, int64_t ldx, const T* w, int64_t ldw, T* out, int64_t ldo, int64_t m,
               int64_t n, int64_t k, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
