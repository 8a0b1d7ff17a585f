// CPU reference of V4's sparse multi-query attention: one shared K=V head, per-head sinks, keys =
// a sliding window of raw KV plus a set of compressed entries (spec §3.1, §3.3-3.6).
//
// For query i at absolute position t = q_pos0 + i and head h, the keys are
//  - raw rows whose positions p = kv_pos0 + row satisfy WindowBegin(t, window) <= p <= t, in
//    position order, then
//  - compressed entries: comp_idx[i, :] when given (ascending ids, -1 entries skipped), else every
//    entry w < NumVisibleCompressed(t, comp_ratio), in index order.
// scores s = scale · q·k; o = Σ exp(s - mx) v / (Σ exp(s - mx) + exp(sink_h - mx)), the sink a
// denominator-only logit (pitfall 10). Templated on the element type: float for the model, double
// for the finite-difference checks of kernels/cpu/attention_backward.h.
// Thread-safety: reentrant; parallel over (query, head).
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

template <typename T>
struct SparseAttentionParams {
  const T* q = nullptr;               // [num_q, num_heads, head_dim]
  const T* kv = nullptr;              // [num_kv, head_dim], row r at position kv_pos0 + r
  const T* comp_kv = nullptr;         // [num_comp, head_dim] or nullptr (no compressed keys)
  const int32_t* comp_idx = nullptr;  // [num_q, comp_topk] or nullptr (all visible entries)
  const T* sink = nullptr;            // [num_heads]
  T* out = nullptr;                   // [num_q, num_heads, head_dim]
  T* lse = nullptr;                   // [num_q, num_heads] log-sum-exp incl. the sink, or nullptr
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
};

template <typename T>
void SparseAttentionRef(const SparseAttentionParams<T>& p, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
