// Internal to kernels/cuda: the four-query tensor-core forward behind SparseAttention
// (attention_quad_tc.cu), called after SparseAttention's argument checks when every input is
// bf16, head_dim is 512, out is 16-byte aligned and SharedKeyListApplies holds; other shapes take
// the one-query kernel.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace v4rl::kernels::cuda {

constexpr int64_t kQuadHeadDim = 512;            // the head_dim the four-query kernel is built for
// Pick counts of a shared key list are kept in shared memory for at most this many entries.
constexpr int64_t kSharedKeysMaxPickedEntries = 1024;

// The key-set arguments of the kernels that walk one key list for several consecutive queries
// (the four-query forward and backward, the query-pair backward: attention_quad.cuh and
// attention_pair.cuh).
struct SharedKeyParams {
  const int32_t* comp_idx;  // [num_q, comp_topk] or null (every visible entry)
  int64_t num_q, q_pos0, kv_pos0, window, comp_ratio, num_comp, comp_topk;
  bool has_comp;
};

// The arguments of the four-query forward, checked by SparseAttention.
struct QuadAttentionParams {
  SharedKeyParams keys;
  const uint16_t* q;        // [num_q, num_heads, 512] bf16
  const uint16_t* kv;       // [num_kv, 512] bf16, row r at position kv_pos0 + r
  const uint16_t* comp_kv;  // [num_comp, 512] bf16 or null
  const float* sink;        // [num_heads]
  void* out;                // [num_q, num_heads, 512] bf16 (out_bf16) or f32
  float* lse;               // [num_q, num_heads] or null
  int64_t num_heads;
  float scale;
  bool out_bf16;
};

// Host: whether a shared key list serves these keys (the four-query kernels, the query-pair
// backward): no compressed entries, every visible entry, or picks among at most
// kSharedKeysMaxPickedEntries entries, the picks at least half of them (the queries walk every
// entry up to their largest pick, so sparse picks would waste the products).
inline bool SharedKeyListApplies(bool has_comp, bool has_picks, int64_t num_comp,
                                 int64_t comp_topk) {
  return !has_comp || !has_picks ||
         (num_comp <= kSharedKeysMaxPickedEntries && num_comp <= 2 * comp_topk &&
          comp_topk < 65536);
}

absl::Status LaunchSparseAttentionQuadTc(const QuadAttentionParams& params);

}  // namespace v4rl::kernels::cuda
