#include "kernels/cpu/elementwise_backward.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {


template <typename T>
T InverseRms(const T* x, int64_t dim, T eps) {
  T sum = 0;
  for (int64_t c = 0; c < dim; ++c) sum += x[c] * x[c];
  return T(1) / std::sqrt(sum / T(dim) + eps);
}

}  // namespace

template <typename T>
void RmsNormBackwardRef(const T* x, int64_t ldx, const T* weight, T eps, const T* dy, int64_t ldy,
                        T* dx, int64_t lddx, T* dweight, int64_t rows, int64_t dim,
                        core::ThreadPool* pool) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1));
  // dx = r·(w ⊙ dy) - r³/dim · x · Σ_c (w ⊙ dy ⊙ x)_c, one row at a time.
  core::ParallelForOrInline(pool, 0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * ldx;
      const T* gr = dy + r * ldy;
      T* out = dx + r * lddx;
      const T inv = InverseRms(xr, dim, eps);
      T dot = 0;
      for (int64_t c = 0; c < dim; ++c) dot += (weight ? weight[c] : T(1)) * gr[c] * xr[c];
      const T coef = inv * inv * inv * dot / T(dim);
      for (int64_t c = 0; c < dim; ++c) {
        out[c] += inv * (weight ? weight[c] : T(1)) * gr[c] - coef * xr[c];
      }
    }
  });
  if (dweight == nullptr || weight == nullptr) return;
  // dweight[c] += Σ_r dy[r, c] · x[r, c] · inv_r: row statistics first, then a channel-parallel
  // reduction over rows in row order (deterministic).
  std::vector<T> inv(rows);
  for (int64_t r = 0; r < rows; ++r) inv[r] = InverseRms(x + r * ldx, dim, eps);
  core::ParallelForOrInline(pool, 0, dim, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      T sum = 0;
      for (int64_t r = 0; r < rows; ++r) sum += dy[r * ldy + c] * x[r * ldx + c] * inv[r];
      dweight[c] += sum;
    }
  });
}

template <typename T>
void RopeBackwardRef(T* grad, int64_t rows, int64_t num_heads, int64_t row_stride,
                     int64_t head_stride, int64_t head_dim, int64_t rope_dim, const T* cos,
                     const T* sin, bool inverse, core::ThreadPool* pool) {
  const int64_t half = rope_dim / 2;
  const int64_t offset = head_dim - rope_dim;
  core::ParallelForOrInline(pool, 0, rows, 16, [&](int64_t begin, int64_t end) {
    // Rotate every pair of the gradient by the angle opposite to the forward one.
    for (int64_t r = begin; r < end; ++r) {
      const T* c = cos + r * half;
      const T* s = sin + r * half;
      for (int64_t h = 0; h < num_heads; ++h) {
        T* p = grad + r * row_stride + h * head_stride + offset;
        for (int64_t i = 0; i < half; ++i) {
          const T g0 = p[2 * i];
          const T g1 = p[2 * i + 1];
          const T si = inverse ? s[i] : -s[i];
          p[2 * i] = g0 * c[i] - g1 * si;
          p[2 * i + 1] = g1 * c[i] + g0 * si;
        }
      }
    }
  });
}

template <typename T>
void SqrtSoftplusBackwardRef(const T* x, const T* dy, T* dx, int64_t n) {
  // d sqrt(sp(x)) = sp'(x) / (2 sqrt(sp(x))); sp' = sigmoid below the threshold, 1 above.
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const bool linear = v > T(20);
    const T softplus = linear ? v : std::log1p(std::exp(v));
    const T slope = linear ? T(1) : T(1) / (T(1) + std::exp(-v));
    dx[i] += dy[i] * slope / (T(2) * std::sqrt(softplus));
  }
}

template <typename T>
void SwiGluClampBackwardRef(const T* gate, const T* up, T limit, const T* dy, T* dgate, T* dup,
                            int64_t n) {
  // y = silu(g) · u with g = min(gate, limit), u = clamp(up, ±limit); clamped inputs get 0.
  for (int64_t i = 0; i < n; ++i) {
    T g = gate[i];
    T u = up[i];
    bool gate_passes = true;
    bool up_passes = true;
    if (limit > T(0)) {
      gate_passes = g <= limit;
      up_passes = u >= -limit && u <= limit;
      g = std::min(g, limit);
      u = std::clamp(u, -limit, limit);
    }
    const T sig = T(1) / (T(1) + std::exp(-g));
    const T silu = g * sig;
    if (gate_passes) dgate[i] += dy[i] * u * sig * (T(1) + g * (T(1) - sig));
    if (up_passes) dup[i] += dy[i] * silu;
  }
}

#define V4RL_INSTANTIATE(T)                                                                  \
  template void RmsNormBackwardRef<T>(const T*, int64_t, const T*, T, const T*, int64_t, T*, \
                                      int64_t, T*, int64_t, int64_t, core::ThreadPool*);     \
  template void RopeBackwardRef<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                   const T*, const T*, bool, core::ThreadPool*);             \
  template void SqrtSoftplusBackwardRef<T>(const T*, const T*, T*, int64_t);                 \
  template void SwiGluClampBackwardRef<T>(const T*, const T*, T, const T*, T*, T*, int64_t);
V4RL_INSTANTIATE(float)
V4RL_INSTANTIATE(double)
#undef V4RL_INSTANTIATE

}  // namespace v4rl::kernels::cpu
