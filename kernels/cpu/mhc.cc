#include "kernels/cpu/mhc.h"

#include <algorithm>
#include <cmath>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void ForTokens(int64_t num_tokens, int64_t grain, core::ThreadPool* pool,
               const std::function<void(int64_t, int64_t)>& fn) {
  if (pool == nullptr) {
    fn(0, num_tokens);
  } else {
    pool->ParallelFor(0, num_tokens, grain, fn);
  }
}

// Divides every column of the n x n matrix by (its sum + eps).
void NormalizeColumns(float* m, int64_t n, float eps) {
  for (int64_t k = 0; k < n; ++k) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += m[j * n + k];
    const float denom = sum + eps;
    for (int64_t j = 0; j < n; ++j) m[j * n + k] /= denom;
  }
}

// Divides every row by (its sum + eps).
void NormalizeRows(float* m, int64_t n, float eps) {
  for (int64_t j = 0; j < n; ++j) {
    float sum = 0.0f;
    for (int64_t k = 0; k < n; ++k) sum += m[j * n + k];
    const float denom = sum + eps;
    for (int64_t k = 0; k < n; ++k) m[j * n + k] /= denom;
  }
}

}  // namespace

void SinkhornRef(float* matrix, int64_t n, int64_t iters, float eps) {
  // Row softmax (max-subtracted) plus eps.
  for (int64_t j = 0; j < n; ++j) {
    float* row = matrix + j * n;
    const float mx = *std::max_element(row, row + n);
    float sum = 0.0f;
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

void MhcCoefficientsRef(const float* mixes, const float* base, const float* scale,
                        int64_t num_tokens, int64_t n, int64_t iters, float eps, float* pre,
                        float* post, float* comb, core::ThreadPool* pool) {
  const int64_t width = (2 + n) * n;
  ForTokens(num_tokens, 16, pool, [&](int64_t begin, int64_t end) {
    // Per token: split [pre | post | res], apply the gates, project res with Sinkhorn.
    for (int64_t t = begin; t < end; ++t) {
      const float* m = mixes + t * width;
      for (int64_t j = 0; j < n; ++j) {
        pre[t * n + j] = Sigmoid(m[j] * scale[0] + base[j]) + eps;
        post[t * n + j] = 2.0f * Sigmoid(m[n + j] * scale[1] + base[n + j]);
      }
      float* c = comb + t * n * n;
      for (int64_t e = 0; e < n * n; ++e) c[e] = m[2 * n + e] * scale[2] + base[2 * n + e];
      SinkhornRef(c, n, iters, eps);
    }
  });
}

void HcHeadPreRef(const float* mixes, const float* base, const float* scale, int64_t num_tokens,
                  int64_t n, float eps, float* pre) {
  // One gate per (token, stream).
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      pre[t * n + j] = Sigmoid(mixes[t * n + j] * scale[0] + base[j]) + eps;
    }
  }
}

void MhcCollapseRef(const float* streams, const float* pre, int64_t num_tokens, int64_t n,
                    int64_t hidden, float* out, core::ThreadPool* pool) {
  ForTokens(num_tokens, 8, pool, [&](int64_t begin, int64_t end) {
    // Weighted sum of the token's streams, stream 0 first.
    for (int64_t t = begin; t < end; ++t) {
      const float* x = streams + t * n * hidden;
      float* y = out + t * hidden;
      for (int64_t h = 0; h < hidden; ++h) {
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) sum += pre[t * n + j] * x[j * hidden + h];
        y[h] = sum;
      }
    }
  });
}

void MhcExpandRef(const float* streams, const float* y, const float* post, const float* comb,
                  int64_t num_tokens, int64_t n, int64_t hidden, float* out,
                  core::ThreadPool* pool) {
  ForTokens(num_tokens, 8, pool, [&](int64_t begin, int64_t end) {
    // Output stream k: the comb-mixed input streams (sum over j) plus post_k times y.
    for (int64_t t = begin; t < end; ++t) {
      const float* x = streams + t * n * hidden;
      const float* c = comb + t * n * n;
      for (int64_t k = 0; k < n; ++k) {
        float* o = out + (t * n + k) * hidden;
        const float pk = post[t * n + k];
        for (int64_t h = 0; h < hidden; ++h) {
          float mixed = 0.0f;
          for (int64_t j = 0; j < n; ++j) mixed += c[j * n + k] * x[j * hidden + h];
          o[h] = pk * y[t * hidden + h] + mixed;
        }
      }
    }
  });
}

}  // namespace v4rl::kernels::cpu
