// Internal to kernels/cuda: the four-query tensor-core forward behind SparseAttention
// (attention_quad_tc.cu), called after SparseAttention's argument checks when every input is
// bf16, head_dim is 512 and QuadAttentionApplies holds; other shapes take the one-query kernel.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace v4rl::kernels::cuda {

constexpr int64_t kQuadHeadDim = 512;            // the head_dim the four-query kernel is built for
constexpr int64_t kQuadMaxPickedEntries = 1024;  // pick counts in shared memory

// The arguments of the four-query kernel, checked by SparseAttention.
struct QuadAttentionParams {
  const uint16_t* q;        // [num_q, num_heads, 512] bf16
  const uint16_t* kv;       // [num_kv, 512] bf16, row r at position kv_pos0 + r
  const uint16_t* comp_kv;  // [num_comp, 512] bf16 or null
  const int32_t* comp_idx;  // [num_q, comp_topk] or null (every visible entry)
  const float* sink;        // [num_heads]
  void* out;                // [num_q, num_heads, 512] bf16 (out_bf16) or f32
  float* lse;               // [num_q, num_heads] or null
  int64_t num_q, num_heads, num_comp, comp_topk, q_pos0, kv_pos0, window, comp_ratio;
  float scale;
  bool out_bf16;
};

// Host: whether the four-query kernel serves these keys: no compressed entries, every visible
// entry, or picks among at most kQuadMaxPickedEntries entries, the picks at least half of them
// (the four queries walk every entry up to their largest pick, as the query-pair backward does).
inline bool QuadAttentionApplies(bool has_comp, bool has_picks, int64_t num_comp,
                                 int64_t comp_topk) {
  return !has_comp || !has_picks ||
         (num_comp <= kQuadMaxPickedEntries && num_comp <= 2 * comp_topk && comp_topk < 65536);
}

absl::Status LaunchSparseAttentionQuadTc(const QuadAttentionParams& params);

}  // namespace v4rl::kernels::cuda
