#include "kernels/cpu/attention_backward.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cpu {
namespace {


template <typename T>
T Dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Key of a (query, head) pair: a raw KV row (code >= 0) or compressed entry -code - 1.
template <typename T>
const T* KeyRow(const SparseAttentionBackwardParams<T>& p, int64_t code) {
  return code >= 0 ? p.kv + code * p.head_dim : p.comp_kv + (-code - 1) * p.head_dim;
}

// Scratch entries per chunk of (query, head) items (~16 MB of codes, probabilities and score
// gradients): long prefills do not need O(num_q · num_heads · keys) memory at once.
constexpr int64_t kScratchEntries = int64_t{1} << 20;
// Channels of a key row per task of the key-gradient pass.
constexpr int64_t kChannelBlock = 16;

}  // namespace

template <typename T>
void SparseAttentionBackwardRef(const SparseAttentionBackwardParams<T>& p, core::ThreadPool* pool) {
  const int64_t max_keys =
      p.window + (p.comp_kv == nullptr ? 0 : (p.comp_idx ? p.comp_topk : p.num_comp));
  const int64_t items = p.num_q * p.num_heads;
  // (query, head) items go in chunks that bound the scratch; chunks and the items inside them
  // are reduced in item order, so the chunk size does not change any sum.
  const int64_t chunk =
      p.chunk_items > 0 ? p.chunk_items
                        : std::max<int64_t>(1, kScratchEntries / std::max<int64_t>(1, max_keys));
  // Per item of a chunk: its keys, their probabilities p_k and score gradients ds_k.
  std::vector<int64_t> key_code(std::min(chunk, items) * max_keys);
  std::vector<T> prob(key_code.size());
  std::vector<T> dscore(key_code.size());
  std::vector<int64_t> num_keys(std::min(chunk, items));
  std::vector<T> dsink_item(num_keys.size());
  for (int64_t first_item = 0; first_item < items; first_item += chunk) {
    const int64_t chunk_items = std::min(chunk, items - first_item);
    core::ParallelForOrInline(pool, 0, chunk_items, 4, [&](int64_t begin, int64_t end) {
      std::vector<T> out(p.head_dim);
      for (int64_t local = begin; local < end; ++local) {
        const int64_t item = first_item + local;
        const int64_t i = item / p.num_heads;
        const int64_t h = item % p.num_heads;
        const int64_t t = p.q_pos0 + i;
        const T* q = p.q + item * p.head_dim;
        const T* dout = p.dout + item * p.head_dim;
        int64_t* codes = key_code.data() + local * max_keys;
        T* pk = prob.data() + local * max_keys;
        T* dsk = dscore.data() + local * max_keys;
        // The forward's key set: window rows in position order, then compressed entries.
        int64_t n = 0;
        const int64_t first = std::max(plan::WindowBegin(t, p.window), p.kv_pos0);
        for (int64_t pos = first; pos <= t; ++pos) codes[n++] = pos - p.kv_pos0;
        if (p.comp_kv != nullptr) {
          if (p.comp_idx != nullptr) {
            for (int64_t j = 0; j < p.comp_topk; ++j) {
              const int32_t w = p.comp_idx[i * p.comp_topk + j];
              if (w >= 0) codes[n++] = -int64_t{w} - 1;
            }
          } else {
            const int64_t visible =
                std::min(plan::NumVisibleCompressed(t, p.comp_ratio), p.num_comp);
            for (int64_t w = 0; w < visible; ++w) codes[n++] = -w - 1;
          }
        }
        num_keys[local] = n;
        // Softmax over the keys plus the value-less sink, recomputed in T.
        const T sink = p.sink[h];
        T mx = sink;
        for (int64_t k = 0; k < n; ++k) {
          pk[k] = p.scale * Dot(q, KeyRow(p, codes[k]), p.head_dim);
          mx = std::max(mx, pk[k]);
        }
        T denom = std::exp(sink - mx);
        for (int64_t k = 0; k < n; ++k) {
          pk[k] = std::exp(pk[k] - mx);
          denom += pk[k];
        }
        std::fill(out.begin(), out.end(), T(0));
        for (int64_t k = 0; k < n; ++k) {
          pk[k] /= denom;
          const T* v = KeyRow(p, codes[k]);
          for (int64_t d = 0; d < p.head_dim; ++d) out[d] += pk[k] * v[d];
        }
        // ds_k = p_k (dout·v_k - dout·out); the sink's logit gets -p_sink (dout·out).
        const T dout_dot_out = Dot(dout, out.data(), p.head_dim);
        dsink_item[local] = -std::exp(sink - mx) / denom * dout_dot_out;
        T* dq = p.dq + item * p.head_dim;
        for (int64_t k = 0; k < n; ++k) {
          const T* v = KeyRow(p, codes[k]);
          dsk[k] = pk[k] * (Dot(dout, v, p.head_dim) - dout_dot_out);
          const T coef = p.scale * dsk[k];
          for (int64_t d = 0; d < p.head_dim; ++d) dq[d] += coef * v[d];
        }
      }
    });

    // Key rows: key side scale·ds_k·q plus value side p_k·dout, summed over (query, head, key)
    // in order; each task owns a block of channels of every row.
    const int64_t blocks = (p.head_dim + kChannelBlock - 1) / kChannelBlock;
    core::ParallelForOrInline(pool, 0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      const int64_t d0 = block_begin * kChannelBlock;
      const int64_t d1 = std::min(block_end * kChannelBlock, p.head_dim);
      for (int64_t local = 0; local < chunk_items; ++local) {
        const int64_t item = first_item + local;
        const T* q = p.q + item * p.head_dim;
        const T* dout = p.dout + item * p.head_dim;
        for (int64_t k = 0; k < num_keys[local]; ++k) {
          const int64_t code = key_code[local * max_keys + k];
          T* row = code >= 0 ? p.dkv + code * p.head_dim : p.dcomp_kv + (-code - 1) * p.head_dim;
          const T coef = p.scale * dscore[local * max_keys + k];
          const T pk = prob[local * max_keys + k];
          for (int64_t d = d0; d < d1; ++d) row[d] += coef * q[d] + pk * dout[d];
        }
      }
    });

    // Sinks: per-head sums over queries in order.
    for (int64_t local = 0; local < chunk_items; ++local) {
      p.dsink[(first_item + local) % p.num_heads] += dsink_item[local];
    }
  }
}

template void SparseAttentionBackwardRef<float>(const SparseAttentionBackwardParams<float>&,
                                                core::ThreadPool*);
template void SparseAttentionBackwardRef<double>(const SparseAttentionBackwardParams<double>&,
                                                 core::ThreadPool*);

}  // namespace v4rl::kernels::cpu
