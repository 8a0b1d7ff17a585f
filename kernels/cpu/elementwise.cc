#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {

using Vec8 = float __attribute__((vector_size(32)));

// Sum of squares with 8 lane-wise partial sums, reduced pairwise, then the tail.
float SumOfSquares(const float* x, int64_t n) {
  Vec8 acc = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Vec8 v;
    std::memcpy(&v, x + i, sizeof(v));
    acc += v * v;
  }
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) sum += x[i] * x[i];
  return sum;
}

// Other element types: in index order.
template <typename T>
T SumOfSquares(const T* x, int64_t n) {
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  return sum;
}


}  // namespace

template <typename T>
void RmsNormRef(const T* x, int64_t ldx, const T* weight, T eps, T* out, int64_t ldo, int64_t rows,
                int64_t dim, core::ThreadPool* pool) {
  core::ParallelForOrInline(pool, 0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1)),
          [&](int64_t begin, int64_t end) {
            // One row at a time: statistic, then scale (and weight) every channel.
            for (int64_t r = begin; r < end; ++r) {
              const T* xr = x + r * ldx;
              T* yr = out + r * ldo;
              const T inv = T(1) / std::sqrt(SumOfSquares(xr, dim) / T(dim) + eps);
              if (weight == nullptr) {
                for (int64_t c = 0; c < dim; ++c) yr[c] = xr[c] * inv;
              } else {
                for (int64_t c = 0; c < dim; ++c) yr[c] = weight[c] * (xr[c] * inv);
              }
            }
          });
}

template <typename T>
void RopeRef(T* x, int64_t rows, int64_t num_heads, int64_t row_stride, int64_t head_stride,
             int64_t head_dim, int64_t rope_dim, const T* cos, const T* sin, bool inverse,
             core::ThreadPool* pool) {
  const int64_t half = rope_dim / 2;
  const int64_t offset = head_dim - rope_dim;
  core::ParallelForOrInline(pool, 0, rows, 16, [&](int64_t begin, int64_t end) {
    // Each row's heads share that row's angles; rotate each adjacent channel pair.
    for (int64_t r = begin; r < end; ++r) {
      const T* c = cos + r * half;
      const T* s = sin + r * half;
      for (int64_t h = 0; h < num_heads; ++h) {
        T* p = x + r * row_stride + h * head_stride + offset;
        for (int64_t i = 0; i < half; ++i) {
          const T x0 = p[2 * i];
          const T x1 = p[2 * i + 1];
          const T si = inverse ? -s[i] : s[i];
          p[2 * i] = x0 * c[i] - x1 * si;
          p[2 * i + 1] = x1 * c[i] + x0 * si;
        }
      }
    }
  });
}

template <typename T>
void SqrtSoftplusRef(const T* x, T* out, int64_t n) {
  // softplus(v) = v above the threshold 20, log1p(exp(v)) below (PyTorch's definition).
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    out[i] = std::sqrt(v > T(20) ? v : std::log1p(std::exp(v)));
  }
}

template <typename T>
void SwiGluClampRef(const T* gate, const T* up, T limit, T* out, int64_t n) {
  // Gate clamped from above only, up on both sides (pitfall 11), then silu(gate) · up.
  for (int64_t i = 0; i < n; ++i) {
    T g = gate[i];
    T u = up[i];
    if (limit > 0) {
      g = std::min(g, limit);
      u = std::clamp(u, -limit, limit);
    }
    out[i] = g / (T(1) + std::exp(-g)) * u;
  }
}

#define V4RL_INSTANTIATE(T)                                                                    \
  template void RmsNormRef<T>(const T*, int64_t, const T*, T, T*, int64_t, int64_t, int64_t,   \
                              core::ThreadPool*);                                              \
  template void RopeRef<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const T*, \
                           const T*, bool, core::ThreadPool*);                                 \
  template void SqrtSoftplusRef<T>(const T*, T*, int64_t);                                     \
  template void SwiGluClampRef<T>(const T*, const T*, T, T*, int64_t);
V4RL_INSTANTIATE(float)
V4RL_INSTANTIATE(double)
#undef V4RL_INSTANTIATE

}  // namespace v4rl::kernels::cpu
