#include "kernels/cpu/mhc_backward.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {

template <typename T>
T Sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}


// y = x / (line sums + eps) along rows (by_rows) or columns, out of place.
template <typename T>
void Normalize(const T* x, int64_t n, T eps, bool by_rows, T* y) {
  for (int64_t a = 0; a < n; ++a) {
    T sum = 0;
    for (int64_t b = 0; b < n; ++b) sum += by_rows ? x[a * n + b] : x[b * n + a];
    const T denom = sum + eps;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t at = by_rows ? a * n + b : b * n + a;
      y[at] = x[at] / denom;
    }
  }
}

// Backward of Normalize: with S the line sum, dx = dy/(S+eps) - Σ_line(dy·x)/(S+eps)², in place
// on grad (dy on entry, dx on return).
template <typename T>
void NormalizeBackward(const T* x, int64_t n, T eps, bool by_rows, T* grad) {
  for (int64_t a = 0; a < n; ++a) {
    T sum = 0;
    T dot = 0;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t at = by_rows ? a * n + b : b * n + a;
      sum += x[at];
      dot += grad[at] * x[at];
    }
    const T denom = sum + eps;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t at = by_rows ? a * n + b : b * n + a;
      grad[at] = grad[at] / denom - dot / (denom * denom);
    }
  }
}

}  // namespace

template <typename T>
void SinkhornBackwardRef(const T* logits, int64_t n, int64_t iters, T eps, const T* dmatrix,
                         T* dlogits) {
  const int64_t nn = n * n;
  // Forward replay. states[0] = row softmax (without eps); states[s + 1] is the input of
  // normalisation s (s = 0: columns, then alternating rows, columns).
  const int64_t num_norms = 2 * iters - 1;
  std::vector<T> states((num_norms + 1) * nn);
  T* softmax = states.data();
  for (int64_t j = 0; j < n; ++j) {
    const T* row = logits + j * n;
    const T mx = *std::max_element(row, row + n);
    T sum = 0;
    for (int64_t k = 0; k < n; ++k) {
      softmax[j * n + k] = std::exp(row[k] - mx);
      sum += softmax[j * n + k];
    }
    for (int64_t k = 0; k < n; ++k) softmax[j * n + k] /= sum;
  }
  T* first = states.data() + nn;
  for (int64_t e = 0; e < nn; ++e) first[e] = softmax[e] + eps;
  for (int64_t s = 0; s + 1 < num_norms; ++s) {
    Normalize(states.data() + (s + 1) * nn, n, eps, /*by_rows=*/s % 2 == 1,
              states.data() + (s + 2) * nn);
  }
  // Reverse through the normalisations, last (a column one) first.
  std::vector<T> grad(dmatrix, dmatrix + nn);
  for (int64_t s = num_norms - 1; s >= 0; --s) {
    NormalizeBackward(states.data() + (s + 1) * nn, n, eps, /*by_rows=*/s % 2 == 1, grad.data());
  }
  // The eps shift passes the gradient through; row softmax: dL = p ⊙ (g - Σ_k g·p).
  for (int64_t j = 0; j < n; ++j) {
    T dot = 0;
    for (int64_t k = 0; k < n; ++k) dot += grad[j * n + k] * softmax[j * n + k];
    for (int64_t k = 0; k < n; ++k) {
      dlogits[j * n + k] += softmax[j * n + k] * (grad[j * n + k] - dot);
    }
  }
}

template <typename T>
void MhcCoefficientsBackwardRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens,
                                int64_t n, int64_t iters, T eps, const T* dpre, const T* dpost,
                                const T* dcomb, T* dmixes, T* dbase, T* dscale,
                                core::ThreadPool* pool) {
  const int64_t width = (2 + n) * n;
  // Gradients of the gate/Sinkhorn logits z = scale[group]·m + base, one row per token.
  std::vector<T> dlogit(num_tokens * width, T(0));
  core::ParallelForOrInline(pool, 0, num_tokens, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> logits(n * n);
    for (int64_t t = begin; t < end; ++t) {
      const T* m = mixes + t * width;
      T* dz = dlogit.data() + t * width;
      // pre = sigmoid(z) + eps, post = 2·sigmoid(z).
      for (int64_t j = 0; j < n; ++j) {
        const T sp = Sigmoid(m[j] * scale[0] + base[j]);
        dz[j] = dpre[t * n + j] * sp * (T(1) - sp);
        const T sq = Sigmoid(m[n + j] * scale[1] + base[n + j]);
        dz[n + j] = dpost[t * n + j] * T(2) * sq * (T(1) - sq);
      }
      // comb = Sinkhorn(z).
      for (int64_t e = 0; e < n * n; ++e) logits[e] = m[2 * n + e] * scale[2] + base[2 * n + e];
      SinkhornBackwardRef(logits.data(), n, iters, eps, dcomb + t * n * n, dz + 2 * n);
    }
  });
  // dm = dz·scale[group]; base and scale gradients summed over tokens in order.
  auto group = [n](int64_t e) { return e < n ? 0 : (e < 2 * n ? 1 : 2); };
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* m = mixes + t * width;
    const T* dz = dlogit.data() + t * width;
    for (int64_t e = 0; e < width; ++e) {
      dmixes[t * width + e] += dz[e] * scale[group(e)];
      dbase[e] += dz[e];
      dscale[group(e)] += dz[e] * m[e];
    }
  }
}

template <typename T>
void HcHeadPreBackwardRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens,
                          int64_t n, const T* dpre, T* dmixes, T* dbase, T* dscale) {
  // pre = sigmoid(scale·m + base) + eps, per (token, stream), tokens in order.
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      const T m = mixes[t * n + j];
      const T s = Sigmoid(m * scale[0] + base[j]);
      const T dz = dpre[t * n + j] * s * (T(1) - s);
      dmixes[t * n + j] += dz * scale[0];
      dbase[j] += dz;
      dscale[0] += dz * m;
    }
  }
}

template <typename T>
void MhcCollapseBackwardRef(const T* streams, const T* pre, const T* dout, int64_t num_tokens,
                            int64_t n, int64_t hidden, T* dstreams, T* dpre,
                            core::ThreadPool* pool) {
  core::ParallelForOrInline(pool, 0, num_tokens, 8, [&](int64_t begin, int64_t end) {
    // dstreams_j += pre_j·dout; dpre_j += <dout, streams_j>.
    for (int64_t t = begin; t < end; ++t) {
      const T* g = dout + t * hidden;
      for (int64_t j = 0; j < n; ++j) {
        const T* x = streams + (t * n + j) * hidden;
        T* dx = dstreams + (t * n + j) * hidden;
        const T pj = pre[t * n + j];
        T dot = 0;
        for (int64_t h = 0; h < hidden; ++h) {
          dx[h] += pj * g[h];
          dot += g[h] * x[h];
        }
        dpre[t * n + j] += dot;
      }
    }
  });
}

template <typename T>
void MhcExpandBackwardRef(const T* streams, const T* y, const T* post, const T* comb, const T* dout,
                          int64_t num_tokens, int64_t n, int64_t hidden, T* dstreams, T* dy,
                          T* dpost, T* dcomb, core::ThreadPool* pool) {
  core::ParallelForOrInline(pool, 0, num_tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* yt = y + t * hidden;
      const T* c = comb + t * n * n;
      // Through post_k·y: dy += Σ_k post_k·dout_k, dpost_k += <dout_k, y>.
      for (int64_t k = 0; k < n; ++k) {
        const T* g = dout + (t * n + k) * hidden;
        const T pk = post[t * n + k];
        T dot = 0;
        for (int64_t h = 0; h < hidden; ++h) {
          dy[t * hidden + h] += pk * g[h];
          dot += g[h] * yt[h];
        }
        dpost[t * n + k] += dot;
      }
      // Through Σ_j comb[j][k]·x_j: dx_j += Σ_k comb[j][k]·dout_k, dcomb[j][k] += <dout_k, x_j>.
      for (int64_t j = 0; j < n; ++j) {
        const T* x = streams + (t * n + j) * hidden;
        T* dx = dstreams + (t * n + j) * hidden;
        for (int64_t k = 0; k < n; ++k) {
          const T* g = dout + (t * n + k) * hidden;
          const T cjk = c[j * n + k];
          T dot = 0;
          for (int64_t h = 0; h < hidden; ++h) {
            dx[h] += cjk * g[h];
            dot += g[h] * x[h];
          }
          dcomb[t * n * n + j * n + k] += dot;
        }
      }
    }
  });
}

#define V4RL_INSTANTIATE(T)                                                                        \
  template void SinkhornBackwardRef<T>(const T*, int64_t, int64_t, T, const T*, T*);               \
  template void MhcCoefficientsBackwardRef<T>(const T*, const T*, const T*, int64_t, int64_t,      \
                                              int64_t, T, const T*, const T*, const T*, T*, T*,    \
                                              T*, core::ThreadPool*);                              \
  template void HcHeadPreBackwardRef<T>(const T*, const T*, const T*, int64_t, int64_t, const T*,  \
                                        T*, T*, T*);                                               \
  template void MhcCollapseBackwardRef<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                          T*, T*, core::ThreadPool*);                              \
  template void MhcExpandBackwardRef<T>(const T*, const T*, const T*, const T*, const T*, int64_t, \
                                        int64_t, int64_t, T*, T*, T*, T*, core::ThreadPool*);
V4RL_INSTANTIATE(float)
V4RL_INSTANTIATE(double)
#undef V4RL_INSTANTIATE

}  // namespace v4rl::kernels::cpu
