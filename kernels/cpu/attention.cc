#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cpu {
namespace {

// float: the vectorised primitives; double (finite-difference checks): plain loops.
float DotProduct(const float* a, const float* b, int64_t n) { return DotF32(a, b, n); }
double DotProduct(const double* a, const double* b, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
void AddScaled(float w, const float* v, float* o, int64_t n) { AxpyF32(w, v, o, n); }
void AddScaled(double w, const double* v, double* o, int64_t n) {
  for (int64_t d = 0; d < n; ++d) o[d] += w * v[d];
}

}  // namespace

template <typename T>
void SparseAttentionRef(const SparseAttentionParams<T>& p, core::ThreadPool* pool) {
  const int64_t max_keys =
      p.window + (p.comp_kv == nullptr ? 0 : (p.comp_idx ? p.comp_topk : p.num_comp));
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<const T*> keys(max_keys);
    std::vector<T> probs(max_keys);
    // One (query, head) pair per item.
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / p.num_heads;
      const int64_t h = item % p.num_heads;
      const int64_t t = p.q_pos0 + i;
      const T* q = p.q + (i * p.num_heads + h) * p.head_dim;
      // Gather the key set: window rows in position order, then compressed entries.
      int64_t num_keys = 0;
      const int64_t first = std::max(plan::WindowBegin(t, p.window), p.kv_pos0);
      for (int64_t pos = first; pos <= t; ++pos)
        keys[num_keys++] = p.kv + (pos - p.kv_pos0) * p.head_dim;
      if (p.comp_kv != nullptr) {
        if (p.comp_idx != nullptr) {
          for (int64_t j = 0; j < p.comp_topk; ++j) {
            const int32_t w = p.comp_idx[i * p.comp_topk + j];
            if (w >= 0) keys[num_keys++] = p.comp_kv + w * p.head_dim;
          }
        } else {
          const int64_t visible =
              std::min(plan::NumVisibleCompressed(t, p.comp_ratio), p.num_comp);
          for (int64_t w = 0; w < visible; ++w) keys[num_keys++] = p.comp_kv + w * p.head_dim;
        }
      }
      // Scores and their max, the sink included.
      const T sink = p.sink[h];
      T mx = sink;
      for (int64_t k = 0; k < num_keys; ++k) {
        probs[k] = p.scale * DotProduct(q, keys[k], p.head_dim);
        mx = std::max(mx, probs[k]);
      }
      // Softmax denominator over keys plus the value-less sink.
      T denom = 0;
      for (int64_t k = 0; k < num_keys; ++k) {
        probs[k] = std::exp(probs[k] - mx);
        denom += probs[k];
      }
      denom += std::exp(sink - mx);
      // Normalised probabilities times values (K = V), accumulated in key order.
      T* o = p.out + (i * p.num_heads + h) * p.head_dim;
      std::fill(o, o + p.head_dim, T(0));
      for (int64_t k = 0; k < num_keys; ++k) AddScaled(probs[k] / denom, keys[k], o, p.head_dim);
      if (p.lse != nullptr) p.lse[i * p.num_heads + h] = mx + std::log(denom);
    }
  };
  const int64_t items = p.num_q * p.num_heads;
  core::ParallelForOrInline(pool, 0, items, 4, run);
}

template void SparseAttentionRef<float>(const SparseAttentionParams<float>&, core::ThreadPool*);
template void SparseAttentionRef<double>(const SparseAttentionParams<double>&, core::ThreadPool*);

}  // namespace v4rl::kernels::cpu
