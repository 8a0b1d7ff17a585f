// CPU reference backward of V4's sparse multi-query attention with sinks
// (kernels/cpu/attention.h): gradients of the queries, the shared K=V rows, the compressed
// entries and the per-head sinks.
//
// The key set of every query is the forward's (window rows in position order, then the selected
// or visible compressed entries), so gradients reach compressed entries only through the entries
// a query attended to: top-k picks (the indexer's, which gets no gradient here) pass gradients
// only through what they selected. K = V: each key row receives both its key-side gradient
// (scale · Σ ds · q) and its value-side gradient (Σ p · dout).
//
// The backward recomputes the softmax of every (query, head) from q, kv and the sink rather than
// reading a saved log-sum-exp: it costs one extra score pass, keeps the saved activations to the
// forward's inputs, and makes the result exact for whatever precision T is.
// Gradients are ADDED to dq, dkv, dcomp_kv and dsink (the caller zeroes them).
// Thread-safety: reentrant. Parallel over (query, head) for dq and the per-key probabilities,
// then over channel blocks for dkv / dcomp_kv, so every sum runs in a fixed order and results do
// not depend on the thread count. Scratch: bounded (items are processed in chunks).
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

template <typename T>
struct SparseAttentionBackwardParams {
  const T* q = nullptr;               // [num_q, num_heads, head_dim]
  const T* kv = nullptr;              // [num_kv, head_dim], row r at position kv_pos0 + r
  const T* comp_kv = nullptr;         // [num_comp, head_dim] or nullptr (no compressed keys)
  const int32_t* comp_idx = nullptr;  // [num_q, comp_topk] or nullptr (all visible entries)
  const T* sink = nullptr;            // [num_heads]
  const T* dout = nullptr;            // [num_q, num_heads, head_dim] dL/d(attention output)
  T* dq = nullptr;                    // [num_q, num_heads, head_dim], +=
  T* dkv = nullptr;                   // [num_kv, head_dim], +=
  T* dcomp_kv = nullptr;              // [num_comp, head_dim], += (nullptr iff comp_kv is)
  T* dsink = nullptr;                 // [num_heads], +=
  int64_t num_q = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  int64_t num_kv = 0;
  int64_t num_comp = 0;
  int64_t comp_topk = 0;
  int64_t q_pos0 = 0;
  int64_t kv_pos0 = 0;
  int64_t window = 0;
  int64_t comp_ratio = 0;  // used when comp_kv != nullptr and comp_idx == nullptr
  T scale = 0;
  // (query, head) items per scratch chunk; 0: about 16 MB of scratch. Results do not depend on it.
  int64_t chunk_items = 0;
};

template <typename T>
void SparseAttentionBackwardRef(const SparseAttentionBackwardParams<T>& p, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
