// CPU reference backward of the mHC arithmetic (kernels/cpu/mhc.h): the Sinkhorn-Knopp
// projection (back through every one of its row/column normalisations), the pre/post/comb
// coefficients, the hc_head gates, the stream collapse and the expand-and-mix.
//
// The 2·iters - 1 normalisations of a token's n x n matrix are recomputed and kept on the stack
// of the backward call (iters·n² values per token) rather than saved by the forward: they cost
// little to recompute and would dominate a layer's saved mHC state otherwise.
// All gradients are ADDED to their outputs (the caller zeroes them); parameter gradients (base,
// scale) are summed over tokens in token order.
// Templated on the element type: float for training, double for the finite-difference checks.
// Thread-safety: reentrant; token-parallel through `pool` (nullptr = calling thread); results do
// not depend on the thread count.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// Backward of SinkhornRef: logits: [n, n] (the forward's input L); dmatrix: [n, n] dL/dM of the
// projected matrix; dlogits: [n, n], += dL/dL.
template <typename T>
void SinkhornBackwardRef(const T* logits, int64_t n, int64_t iters, T eps, const T* dmatrix,
                         T* dlogits);

// Backward of MhcCoefficientsRef. mixes: [num_tokens, (2+n)·n]; base: [(2+n)·n]; scale: [3];
// dpre, dpost: [num_tokens, n]; dcomb: [num_tokens, n, n] (the output gradients);
// dmixes: [num_tokens, (2+n)·n], +=; dbase: [(2+n)·n], +=; dscale: [3], +=.
template <typename T>
void MhcCoefficientsBackwardRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens,
                                int64_t n, int64_t iters, T eps, const T* dpre, const T* dpost,
                                const T* dcomb, T* dmixes, T* dbase, T* dscale,
                                core::ThreadPool* pool);

// Backward of HcHeadPreRef (pre = sigmoid(scale[0]·m + base) + eps). mixes, dpre:
// [num_tokens, n]; base: [n]; scale: [1]; dmixes: [num_tokens, n], +=; dbase: [n], +=;
// dscale: [1], +=.
template <typename T>
void HcHeadPreBackwardRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens,
                          int64_t n, const T* dpre, T* dmixes, T* dbase, T* dscale);

// Backward of MhcCollapseRef (out[t] = Σ_j pre[t, j] · streams[t, j]). streams: [num_tokens, n,
// hidden]; pre: [num_tokens, n]; dout: [num_tokens, hidden]; dstreams: [num_tokens, n, hidden],
// +=; dpre: [num_tokens, n], +=.
template <typename T>
void MhcCollapseBackwardRef(const T* streams, const T* pre, const T* dout, int64_t num_tokens,
                            int64_t n, int64_t hidden, T* dstreams, T* dpre,
                            core::ThreadPool* pool);

// Backward of MhcExpandRef (out[t, k] = post[t, k] · y[t] + Σ_j comb[t, j, k] · streams[t, j]).
// streams, dout: [num_tokens, n, hidden]; y: [num_tokens, hidden]; post: [num_tokens, n];
// comb: [num_tokens, n, n]. Added to: dstreams [num_tokens, n, hidden], dy [num_tokens, hidden],
// dpost [num_tokens, n], dcomb [num_tokens, n, n]. dstreams must not alias dout.
template <typename T>
void MhcExpandBackwardRef(const T* streams, const T* y, const T* post, const T* comb, const T* dout,
                          int64_t num_tokens, int64_t n, int64_t hidden, T* dstreams, T* dy,
                          T* dpost, T* dcomb, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
