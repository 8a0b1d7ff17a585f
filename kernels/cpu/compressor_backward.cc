#include "kernels/cpu/compressor_backward.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {

template <typename T>
void CompressPoolBackwardRef(const T* kv, const T* score, int64_t num_windows, int64_t ratio,
                             int64_t head_dim, bool overlap, int64_t first_entry, const T* dout,
                             T* dkv, T* dscore, core::ThreadPool* pool) {
  const int64_t width = (overlap ? 2 : 1) * head_dim;
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<int64_t> slot_offset(2 * ratio);  // element offset of each slot's channel 0
    std::vector<T> weight(2 * ratio);
    for (int64_t w = begin; w < end; ++w) {
      // The forward's slots: series A of window w - 1 (overlap, w >= 1), then this window.
      int64_t num_slots = 0;
      if (overlap && w >= 1) {
        for (int64_t j = 0; j < ratio; ++j)
          slot_offset[num_slots++] = ((w - 1) * ratio + j) * width;
      }
      const int64_t own_offset = overlap ? head_dim : 0;
      for (int64_t j = 0; j < ratio; ++j) {
        slot_offset[num_slots++] = (w * ratio + j) * width + own_offset;
      }
      const T* g = dout + (w - first_entry) * head_dim;
      // Per channel: recompute the softmax and the pooled value, then
      // dkv_s = w_s·g and dscore_s = w_s·(kv_s - pooled)·g.
      for (int64_t d = 0; d < head_dim; ++d) {
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s < num_slots; ++s) mx = std::max(mx, score[slot_offset[s] + d]);
        T denom = 0;
        for (int64_t s = 0; s < num_slots; ++s) {
          weight[s] = std::exp(score[slot_offset[s] + d] - mx);
          denom += weight[s];
        }
        T pooled = 0;
        for (int64_t s = 0; s < num_slots; ++s) {
          weight[s] /= denom;
          pooled += weight[s] * kv[slot_offset[s] + d];
        }
        for (int64_t s = 0; s < num_slots; ++s) {
          const int64_t at = slot_offset[s] + d;
          dkv[at] += weight[s] * g[d];
          dscore[at] += weight[s] * (kv[at] - pooled) * g[d];
        }
      }
    }
  };
  core::ParallelForOrInline(pool, first_entry, num_windows, 1, run);
}

template void CompressPoolBackwardRef<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                             bool, int64_t, const float*, float*, float*,
                                             core::ThreadPool*);
template void CompressPoolBackwardRef<double>(const double*, const double*, int64_t, int64_t,
                                              int64_t, bool, int64_t, const double*, double*,
                                              double*, core::ThreadPool*);

}  // namespace v4rl::kernels::cpu
