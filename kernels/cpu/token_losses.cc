#include "kernels/cpu/token_losses.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {

template <typename Fn>
void ForRows(int64_t rows, core::ThreadPool* pool, Fn fn) {
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  };
  core::ParallelForOrInline(pool, 0, rows, 1, body);
}

// Marks the support of one row: all tokens, or the `kept` largest logits (ties -> lower id).
template <typename T>
void Support(const T* row, int64_t vocab, int32_t kept, std::vector<uint8_t>& in_support) {
  in_support.assign(vocab, 1);
  if (kept <= 0 || kept >= vocab) return;
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::nth_element(order.begin(), order.begin() + kept, order.end(), [&](int32_t a, int32_t b) {
    return row[a] > row[b] || (row[a] == row[b] && a < b);
  });
  std::fill(in_support.begin(), in_support.end(), 0);
  for (int32_t i = 0; i < kept; ++i) in_support[order[i]] = 1;
}

// log-sum-exp over the support, and the entropy of the renormalised distribution.
template <typename T>
void RowStatistics(const T* row, int64_t vocab, const std::vector<uint8_t>& in_support,
                   double* log_normaliser, double* entropy) {
  double max_logit = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < vocab; ++j) {
    if (in_support[j]) max_logit = std::max(max_logit, static_cast<double>(row[j]));
  }
  double sum = 0, weighted = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    if (!in_support[j]) continue;
    const double shifted = row[j] - max_logit;
    const double e = std::exp(shifted);
    sum += e;
    weighted += e * shifted;
  }
  *log_normaliser = max_logit + std::log(sum);
  // H = log Z - E[z] = log(sum) - weighted/sum in shifted coordinates.
  *entropy = std::log(sum) - weighted / sum;
}

}  // namespace

template <typename T>
void TokenLogprobsRef(const T* logits, const int32_t* targets, const int32_t* kept_counts,
                      int64_t rows, int64_t vocab, T* logprobs, T* entropies,
                      core::ThreadPool* pool) {
  ForRows(rows, pool, [&](int64_t r) {
    if (targets[r] < 0) {
      logprobs[r] = 0;
      if (entropies) entropies[r] = 0;
      return;
    }
    const T* row = logits + r * vocab;
    std::vector<uint8_t> in_support;
    Support(row, vocab, kept_counts ? kept_counts[r] : 0, in_support);
    double log_normaliser, entropy;
    RowStatistics(row, vocab, in_support, &log_normaliser, &entropy);
    logprobs[r] = in_support[targets[r]] ? static_cast<T>(row[targets[r]] - log_normaliser)
                                         : -std::numeric_limits<T>::infinity();
    if (entropies) entropies[r] = static_cast<T>(entropy);
  });
}

template <typename T>
void TokenLogprobsBackwardRef(const T* logits, const int32_t* targets, const int32_t* kept_counts,
                              int64_t rows, int64_t vocab, const T* grad_logprobs,
                              const T* grad_entropies, T* grad_logits, core::ThreadPool* pool) {
  ForRows(rows, pool, [&](int64_t r) {
    T* grad_row = grad_logits + r * vocab;
    std::fill(grad_row, grad_row + vocab, T(0));
    if (targets[r] < 0) return;
    const T* row = logits + r * vocab;
    std::vector<uint8_t> in_support;
    Support(row, vocab, kept_counts ? kept_counts[r] : 0, in_support);
    double log_normaliser, entropy;
    RowStatistics(row, vocab, in_support, &log_normaliser, &entropy);
    const double g_logprob = grad_logprobs[r];
    const double g_entropy = grad_entropies ? grad_entropies[r] : 0.0;
    for (int64_t j = 0; j < vocab; ++j) {
      if (!in_support[j]) continue;
      const double log_p = row[j] - log_normaliser;
      const double p = std::exp(log_p);
      // d logprob / dz_j = [j = target] - p_j ;  d H / dz_j = -p_j (log p_j + H)
      double grad = -g_logprob * p - g_entropy * p * (log_p + entropy);
      if (j == targets[r]) grad += g_logprob;
      grad_row[j] = static_cast<T>(grad);
    }
  });
}

template <typename T>
double MaskedCrossEntropyRef(const T* logits, const int32_t* targets, const T* mask, int64_t rows,
                             int64_t vocab, T* grad_logits, core::ThreadPool* pool) {
  double mask_sum = 0;
  for (int64_t r = 0; r < rows; ++r) mask_sum += mask[r];
  std::vector<int32_t> active_targets(rows);
  for (int64_t r = 0; r < rows; ++r) active_targets[r] = mask[r] != 0 ? targets[r] : -1;
  std::vector<T> logprobs(rows);
  TokenLogprobsRef<T>(logits, active_targets.data(), nullptr, rows, vocab, logprobs.data(),
                      nullptr, pool);
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) loss -= static_cast<double>(mask[r]) * logprobs[r];
  if (mask_sum == 0) {
    if (grad_logits) std::fill(grad_logits, grad_logits + rows * vocab, T(0));
    return 0.0;
  }
  if (grad_logits) {
    std::vector<T> grad_logprobs(rows);
    for (int64_t r = 0; r < rows; ++r) grad_logprobs[r] = static_cast<T>(-mask[r] / mask_sum);
    TokenLogprobsBackwardRef<T>(logits, active_targets.data(), nullptr, rows, vocab,
                                grad_logprobs.data(), nullptr, grad_logits, pool);
  }
  return loss / mask_sum;
}

template <typename T>
void KlDivergenceRef(const T* student_logits, const T* teacher_logits, const T* weights,
                     int64_t rows, int64_t vocab, T* kl, T* grad_student, core::ThreadPool* pool) {
  ForRows(rows, pool, [&](int64_t r) {
    const T* s = student_logits + r * vocab;
    const T* t = teacher_logits + r * vocab;
    const std::vector<uint8_t> all(vocab, 1);
    double log_zs, log_zt, unused;
    RowStatistics(s, vocab, all, &log_zs, &unused);
    RowStatistics(t, vocab, all, &log_zt, &unused);
    double divergence = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      const double log_p = s[j] - log_zs;
      divergence += std::exp(log_p) * (log_p - (t[j] - log_zt));
    }
    kl[r] = static_cast<T>(divergence);
    if (!grad_student) return;
    const double weight = weights ? static_cast<double>(weights[r]) : 1.0;
    for (int64_t j = 0; j < vocab; ++j) {
      const double log_p = s[j] - log_zs;
      grad_student[r * vocab + j] =
          static_cast<T>(weight * std::exp(log_p) * (log_p - (t[j] - log_zt) - divergence));
    }
  });
}

#define V4RL_INSTANTIATE_TOKEN_LOSSES(T)                                                        \
  template void TokenLogprobsRef<T>(const T*, const int32_t*, const int32_t*, int64_t, int64_t, \
                                    T*, T*, core::ThreadPool*);                                 \
  template void TokenLogprobsBackwardRef<T>(const T*, const int32_t*, const int32_t*, int64_t,  \
                                            int64_t, const T*, const T*, T*, core::ThreadPool*); \
  template double MaskedCrossEntropyRef<T>(const T*, const int32_t*, const T*, int64_t, int64_t, \
                                           T*, core::ThreadPool*);                              \
  template void KlDivergenceRef<T>(const T*, const T*, const T*, int64_t, int64_t, T*, T*,      \
                                   core::ThreadPool*);
V4RL_INSTANTIATE_TOKEN_LOSSES(float)
V4RL_INSTANTIATE_TOKEN_LOSSES(double)
#undef V4RL_INSTANTIATE_TOKEN_LOSSES

}  // namespace v4rl::kernels::cpu
