#include "kernels/cpu/mhc.h"

#include <algorithm>
#include <cmath>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {

template <typename T>
T Sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}


// Divides every column of the n x n matrix by (its sum + eps).
template <typename T>
void NormalizeColumns(T* m, int64_t n, T eps) {
  for (int64_t k = 0; k < n; ++k) {
    T sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += m[j * n + k];
    const T denom = sum + eps;
    for (int64_t j = 0; j < n; ++j) m[j * n + k] /= denom;
  }
}

// Divides every row by (its sum + eps).
template <typename T>
void NormalizeRows(T* m, int64_t n, T eps) {
  for (int64_t j = 0; j < n; ++j) {
    T sum = 0;
    for (int64_t k = 0; k < n; ++k) sum += m[j * n + k];
    const T denom = sum + eps;
    for (int64_t k = 0; k < n; ++k) m[j * n + k] /= denom;
  }
}

}  // namespace

template <typename T>
void SinkhornRef(T* matrix, int64_t n, int64_t iters, T eps) {
  // Row softmax (max-subtracted) plus eps.
  for (int64_t j = 0; j < n; ++j) {
    T* row = matrix + j * n;
    const T mx = *std::max_element(row, row + n);
    T sum = 0;
    for (int64_t k = 0; k < n; ++k) {
      row[k] = std::exp(row[k] - mx);
      sum += row[k];
    }
    for (int64_t k = 0; k < n; ++k) row[k] = row[k] / sum + eps;
  }
  // Column normalisation, then iters - 1 rounds of (rows, columns): the last step is columns.
  NormalizeColumns(matrix, n, eps);
  for (int64_t it = 1; it < iters; ++it) {
    NormalizeRows(matrix, n, eps);
    NormalizeColumns(matrix, n, eps);
  }
}

template <typename T>
void MhcCoefficientsRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens,
                        int64_t n, int64_t iters, T eps, T* pre, T* post, T* comb,
                        core::ThreadPool* pool) {
  const int64_t width = (2 + n) * n;
  core::ParallelForOrInline(pool, 0, num_tokens, 16, [&](int64_t begin, int64_t end) {
    // Per token: split [pre | post | res], apply the gates, project res with Sinkhorn.
    for (int64_t t = begin; t < end; ++t) {
      const T* m = mixes + t * width;
      for (int64_t j = 0; j < n; ++j) {
        pre[t * n + j] = Sigmoid(m[j] * scale[0] + base[j]) + eps;
        post[t * n + j] = T(2) * Sigmoid(m[n + j] * scale[1] + base[n + j]);
      }
      T* c = comb + t * n * n;
      for (int64_t e = 0; e < n * n; ++e) c[e] = m[2 * n + e] * scale[2] + base[2 * n + e];
      SinkhornRef(c, n, iters, eps);
    }
  });
}

template <typename T>
void HcHeadPreRef(const T* mixes, const T* base, const T* scale, int64_t num_tokens, int64_t n,
                  T eps, T* pre) {
  // One gate per (token, stream).
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      pre[t * n + j] = Sigmoid(mixes[t * n + j] * scale[0] + base[j]) + eps;
    }
  }
}

template <typename T>
void MhcCollapseRef(const T* streams, const T* pre, int64_t num_tokens, int64_t n, int64_t hidden,
                    T* out, core::ThreadPool* pool) {
  core::ParallelForOrInline(pool, 0, num_tokens, 8, [&](int64_t begin, int64_t end) {
    // Weighted sum of the token's streams, stream 0 first.
    for (int64_t t = begin; t < end; ++t) {
      const T* x = streams + t * n * hidden;
      T* y = out + t * hidden;
      for (int64_t h = 0; h < hidden; ++h) {
        T sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += pre[t * n + j] * x[j * hidden + h];
        y[h] = sum;
      }
    }
  });
}

template <typename T>
void MhcExpandRef(const T* streams, const T* y, const T* post, const T* comb, int64_t num_tokens,
                  int64_t n, int64_t hidden, T* out, core::ThreadPool* pool) {
  core::ParallelForOrInline(pool, 0, num_tokens, 8, [&](int64_t begin, int64_t end) {
    // Output stream k: the comb-mixed input streams (sum over j) plus post_k times y.
    for (int64_t t = begin; t < end; ++t) {
      const T* x = streams + t * n * hidden;
      const T* c = comb + t * n * n;
      for (int64_t k = 0; k < n; ++k) {
        T* o = out + (t * n + k) * hidden;
        const T pk = post[t * n + k];
        for (int64_t h = 0; h < hidden; ++h) {
          T mixed = 0;
          for (int64_t j = 0; j < n; ++j) mixed += c[j * n + k] * x[j * hidden + h];
          o[h] = pk * y[t * hidden + h] + mixed;
        }
      }
    }
  });
}

#define V4RL_INSTANTIATE(T)                                                                        \
  template void SinkhornRef<T>(T*, int64_t, int64_t, T);                                           \
  template void MhcCoefficientsRef<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T,  \
                                      T*, T*, T*, core::ThreadPool*);                              \
  template void HcHeadPreRef<T>(const T*, const T*, const T*, int64_t, int64_t, T, T*);            \
  template void MhcCollapseRef<T>(const T*, const T*, int64_t, int64_t, int64_t, T*,               \
                                  core::ThreadPool*);                                              \
  template void MhcExpandRef<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                T*, core::ThreadPool*);
V4RL_INSTANTIATE(float)
V4RL_INSTANTIATE(double)
#undef V4RL_INSTANTIATE

}  // namespace v4rl::kernels::cpu
