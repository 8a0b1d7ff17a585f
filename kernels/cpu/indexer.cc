#include "kernels/cpu/indexer.h"

#include <algorithm>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/plan/compressed_attention.h"
#include "kernels/plan/topk.h"

namespace v4rl::kernels::cpu {

void IndexerTopKRef(const IndexerTopKParams& p, core::ThreadPool* pool) {
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<float> scores(p.num_keys);
    std::vector<float> pick_scores(p.topk);
    for (int64_t i = begin; i < end; ++i) {
      int32_t* out = p.topk_idx + i * p.topk;
      const int64_t visible =
          std::min(plan::NumVisibleCompressed(p.q_pos0 + i, p.ratio), p.num_keys);
      // Score every visible entry: head-weighted sum of ReLU'd dot products.
      for (int64_t s = 0; s < visible; ++s) {
        const float* k = p.keys + s * p.head_dim;
        float total = 0.0f;
        for (int64_t h = 0; h < p.num_heads; ++h) {
          const float* q = p.q + (i * p.num_heads + h) * p.head_dim;
          const float dot = DotF32(q, k, p.head_dim);
          total += std::max(dot, 0.0f) * p.score_scale * p.weights[i * p.num_heads + h];
        }
        scores[s] = total;
      }
      // All visible entries when they fit, else the top-k; ascending ids, -1 padding.
      const int64_t count = std::min(visible, p.topk);
      if (visible <= p.topk) {
        for (int64_t s = 0; s < count; ++s) out[s] = static_cast<int32_t>(s);
      } else {
        plan::TopK(scores.data(), static_cast<int32_t>(visible), static_cast<int32_t>(p.topk),
                   out, pick_scores.data());
        std::sort(out, out + count);
      }
      std::fill(out + count, out + p.topk, -1);
    }
  };
  core::ParallelForOrInline(pool, 0, p.num_q, 4, run);
}

}  // namespace v4rl::kernels::cpu
