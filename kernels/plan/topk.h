// Deterministic top-k selection shared by the MoE router and the lightning indexer.
//
// Order: a higher score ranks first; equal scores rank the lower index first. This total order
// makes the selected set and its order independent of thread count, chunking or device (the
// TensorRT-LLM routing tie rule). NaN scores never displace a real score.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "kernels/plan/host_device.h"

namespace v4rl::kernels::plan {

// True when (score_a, index_a) ranks before (score_b, index_b).
V4RL_HOST_DEVICE inline bool RanksBefore(float score_a, int32_t index_a, float score_b,
                                         int32_t index_b) {
  return score_a > score_b || (score_a == score_b && index_a < index_b) ||
         (score_b != score_b && score_a == score_a);  // a real score beats NaN
}

// Writes the indices of the `k` best of scores[0, n) to topk_idx[0, k) in rank order and their
// scores to topk_scores[0, k). Requires 0 <= k <= n. Cost O(n + m·k) for m insertions.
V4RL_HOST_DEVICE inline void TopK(const float* scores, int32_t n, int32_t k, int32_t* topk_idx,
                                  float* topk_scores) {
  int32_t filled = 0;
  for (int32_t i = 0; i < n; ++i) {
    const float s = scores[i];
    // Skip candidates that rank after the current k-th pick.
    if (filled == k && !RanksBefore(s, i, topk_scores[k - 1], topk_idx[k - 1])) continue;
    // Shift worse picks one place down and insert (insertion sort on a k-long list).
    int32_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && RanksBefore(s, i, topk_scores[pos - 1], topk_idx[pos - 1])) {
      topk_scores[pos] = topk_scores[pos - 1];
      topk_idx[pos] = topk_idx[pos - 1];
      --pos;
    }
    topk_scores[pos] = s;
    topk_idx[pos] = i;
  }
}

}  // namespace v4rl::kernels::plan
