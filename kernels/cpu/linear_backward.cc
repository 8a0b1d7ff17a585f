#include "kernels/cpu/linear_backward.h"

#include <functional>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {


}  // namespace

template <typename T>
void LinearBackwardRef(const T* x, int64_t ldx, const T* w, int64_t ldw, const T* dy, int64_t ldy,
                       T* dx, int64_t lddx, T* dw, int64_t lddw, int64_t m, int64_t n, int64_t k,
                       core::ThreadPool* pool) {
  if (dx != nullptr) {
    // dx[r, :] += Σ_j dy[r, j] · w[j, :], j ascending: rows of w streamed as axpys.
    core::ParallelForOrInline(pool, 0, m, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        T* out = dx + r * lddx;
        const T* g = dy + r * ldy;
        for (int64_t j = 0; j < n; ++j) {
          const T gj = g[j];
          const T* wj = w + j * ldw;
          for (int64_t c = 0; c < k; ++c) out[c] += gj * wj[c];
        }
      }
    });
  }
  if (dw != nullptr) {
    // dw[j, :] += Σ_r dy[r, j] · x[r, :], r ascending; each task owns whole rows of dw.
    core::ParallelForOrInline(pool, 0, n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        T* out = dw + j * lddw;
        for (int64_t r = 0; r < m; ++r) {
          const T gj = dy[r * ldy + j];
          const T* xr = x + r * ldx;
          for (int64_t c = 0; c < k; ++c) out[c] += gj * xr[c];
        }
      }
    });
  }
}

template void LinearBackwardRef<float>(const float*, int64_t, const float*, int64_t, const float*,
                                       int64_t, float*, int64_t, float*, int64_t, int64_t, int64_t,
                                       int64_t, core::ThreadPool*);
template void LinearBackwardRef<double>(const double*, int64_t, const double*, int64_t,
                                        const double*, int64_t, double*, int64_t, double*, int64_t,
                                        int64_t, int64_t, int64_t, core::ThreadPool*);

}  // namespace v4rl::kernels::cpu
