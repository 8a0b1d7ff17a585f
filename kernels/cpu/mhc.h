// CPU reference of the manifold-constrained hyper-connection (mHC) arithmetic (spec §2.2-2.3):
// turning the 24 (= (2+n)·n) mixes of a token into pre/post/comb coefficients with the
// Sinkhorn-Knopp projection, collapsing n residual streams into one, and expanding a sub-block
// output back while mixing the streams. fp32 throughout. Templated on the element type: float for
// the model, double for the finite-difference checks of kernels/cpu/mhc_backward.h.
// Thread-safety: reentrant; token-parallel through `pool` (nullptr = calling thread).
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// In-place Sinkhorn-Knopp projection of one n x n matrix of logits (row-major, L[j][k]):
// M = row_softmax(L) + eps; column-normalise; then (iters - 1) x (row-normalise, column-
// normalise), eps in every denominator (pitfall 8).
template <typename T>
void SinkhornRef(T* matrix, int64_t n, int64_t iters, T eps);

// mixes: [num_tokens, (2+n)·n] (already RMS-normalised projections), base: [(2+n)·n],
// scale: [3] (alpha_pre, alpha_post, alpha_res). Outputs pre, post: [num_tokens, n];
// comb: [num_tokens, n, n] with comb[j][k] the weight of input stream j in output stream k.
// pre = sigmoid(a0·m + b) + eps; post = 2·sigmoid(a1·m + b); comb = Sinkhorn(a2·m + b).
template <typename T>
void MhcCoefficientsRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens,
                        int64_t n, int64_t iters, T eps, T* pre, T* post, T* comb,
                        core::ThreadPool* pool);

// hc_head collapse weights: pre = sigmoid(scale[0]·m + base) + eps.
// mixes: [num_tokens, n], base: [n], scale: [1]; pre: [num_tokens, n].
template <typename T>
void HcHeadPreRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens, int64_t n,
                  T eps, T* pre);

// out[t] = Σ_j pre[t, j] · streams[t, j]. streams: [num_tokens, n, hidden]; out: [num_tokens,
// hidden].
template <typename T>
void MhcCollapseRef(const T* streams, const T* pre, int64_t num_tokens, int64_t n, int64_t hidden,
                    T* out, core::ThreadPool* pool);

// out[t, k] = post[t, k] · y[t] + Σ_j comb[t, j, k] · streams[t, j] (Mᵀ X: the sum runs over the
// row index). streams, out: [num_tokens, n, hidden] (out must not alias streams);
// y: [num_tokens, hidden].
template <typename T>
void MhcExpandRef(const T* streams, const T* y, const T* post, const T* comb, int64_t num_tokens,
                  int64_t n, int64_t hidden, T* out, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
