// CPU reference of the lightning indexer's scoring and top-k selection (spec §3.5) for one
// sequence: I[t, s] = Σ_h w[t, h] · ReLU(q[t, h] · K[s]) · score_scale over the entries s a query
// may see (s < NumVisibleCompressed(t, ratio)), then the k best (plan/topk.h order).
// Thread-safety: reentrant; parallel over queries.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

struct IndexerTopKParams {
  const float* q = nullptr;        // [num_q, num_heads, head_dim] (RoPE applied)
  const float* weights = nullptr;  // [num_q, num_heads] head weights (already scaled)
  const float* keys = nullptr;     // [num_keys, head_dim] indexer compressed entries
  int32_t* topk_idx = nullptr;     // [num_q, topk]: picks in ascending order, then -1 padding
  int64_t num_q = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  int64_t num_keys = 0;
  int64_t topk = 0;
  int64_t q_pos0 = 0;  // absolute position of query 0
  int64_t ratio = 0;   // compression ratio of the keys
  float score_scale = 0.0f;
};

void IndexerTopKRef(const IndexerTopKParams& p, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
