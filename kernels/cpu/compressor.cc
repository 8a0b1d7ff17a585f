#include "kernels/cpu/compressor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {

void CompressPoolRef(const float* kv, const float* score, int64_t num_windows, int64_t ratio,
                     int64_t head_dim, bool overlap, int64_t first_entry, float* out,
                     core::ThreadPool* pool) {
  const int64_t width = (overlap ? 2 : 1) * head_dim;
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<const float*> kv_slot(2 * ratio);
    std::vector<const float*> score_slot(2 * ratio);
    std::vector<float> weight(2 * ratio);
    for (int64_t w = begin; w < end; ++w) {
      // Slot list: series A of window w - 1 (overlap only, when it exists), then this window.
      int64_t num_slots = 0;
      if (overlap && w >= 1) {
        for (int64_t j = 0; j < ratio; ++j) {
          const int64_t row = (w - 1) * ratio + j;
          kv_slot[num_slots] = kv + row * width;
          score_slot[num_slots++] = score + row * width;
        }
      }
      const int64_t own_offset = overlap ? head_dim : 0;
      for (int64_t j = 0; j < ratio; ++j) {
        const int64_t row = w * ratio + j;
        kv_slot[num_slots] = kv + row * width + own_offset;
        score_slot[num_slots++] = score + row * width + own_offset;
      }
      // Per channel: softmax of the scores over the slots, then the weighted sum of values.
      float* entry = out + (w - first_entry) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t s = 0; s < num_slots; ++s) mx = std::max(mx, score_slot[s][d]);
        float denom = 0.0f;
        for (int64_t s = 0; s < num_slots; ++s) {
          weight[s] = std::exp(score_slot[s][d] - mx);
          denom += weight[s];
        }
        float sum = 0.0f;
        for (int64_t s = 0; s < num_slots; ++s) sum += kv_slot[s][d] * (weight[s] / denom);
        entry[d] = sum;
      }
    }
  };
  if (pool == nullptr) {
    run(first_entry, num_windows);
  } else {
    pool->ParallelFor(first_entry, num_windows, 1, run);
  }
}

}  // namespace v4rl::kernels::cpu
