#include "kernels/cpu/compressor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {

template <typename T>
void CompressPoolRef(const T* kv, const T* score, int64_t num_windows, int64_t ratio,
                     int64_t head_dim, bool overlap, int64_t first_entry, T* out,
                     core::ThreadPool* pool) {
  const int64_t width = (overlap ? 2 : 1) * head_dim;
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<const T*> kv_slot(2 * ratio);
    std::vector<const T*> score_slot(2 * ratio);
    std::vector<T> weight(2 * ratio);
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
      T* entry = out + (w - first_entry) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) {
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s < num_slots; ++s) mx = std::max(mx, score_slot[s][d]);
        T denom = 0;
        for (int64_t s = 0; s < num_slots; ++s) {
          weight[s] = std::exp(score_slot[s][d] - mx);
          denom += weight[s];
        }
        T sum = 0;
        for (int64_t s = 0; s < num_slots; ++s) sum += kv_slot[s][d] * (weight[s] / denom);
        entry[d] = sum;
      }
    }
  };
  core::ParallelForOrInline(pool, first_entry, num_windows, 1, run);
}

template void CompressPoolRef<float>(const float*, const float*, int64_t, int64_t, int64_t, bool,
                                     int64_t, float*, core::ThreadPool*);
template void CompressPoolRef<double>(const double*, const double*, int64_t, int64_t, int64_t, bool,
                                      int64_t, double*, core::ThreadPool*);

}  // namespace v4rl::kernels::cpu
