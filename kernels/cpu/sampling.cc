#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {

double LogSumExp(const float* row, int64_t vocab, double scale) {
  double max_value = -INFINITY;
  for (int64_t j = 0; j < vocab; ++j) max_value = std::max(max_value, scale * row[j]);
  double sum = 0;
  for (int64_t j = 0; j < vocab; ++j) sum += std::exp(scale * row[j] - max_value);
  return max_value + std::log(sum);
}

SampledToken SampleRow(const float* row, int64_t vocab, const SamplingParams& p) {
  SampledToken result;
  const double model_log_normaliser = LogSumExp(row, vocab, 1.0);
  if (p.greedy) {
    result.token = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
    result.kept_count = 1;
    result.model_logprob = static_cast<float>(row[result.token] - model_log_normaliser);
    return result;
  }
  const double inverse_temperature = 1.0 / p.temperature;
  // Tokens in descending logit order (ties -> lower id); only the first `limit` are needed.
  const int64_t limit = p.top_k > 0 ? std::min<int64_t>(p.top_k, vocab) : vocab;
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + limit, order.end(), by_logit);
  const double log_normaliser = LogSumExp(row, vocab, inverse_temperature);
  // Probabilities of the top-k candidates, renormalised over them (top-p acts on this
  // distribution, as in transformers and vLLM).
  std::vector<double> probs(limit);
  double top_k_mass = 0;
  for (int64_t i = 0; i < limit; ++i) {
    probs[i] = std::exp(inverse_temperature * row[order[i]] - log_normaliser);
    top_k_mass += probs[i];
  }
  for (double& prob : probs) prob /= top_k_mass;
  // Top-p: the smallest prefix whose mass reaches p (at least one token).
  double kept_mass = 0;
  int64_t kept = 0;
  while (kept < limit && (kept == 0 || kept_mass < p.top_p)) kept_mass += probs[kept++];
  const double u = core::Rng(p.seed).UniformDouble(p.counter) * kept_mass;
  int64_t chosen = kept - 1;
  double cumulative = 0;
  for (int64_t i = 0; i < kept; ++i) {
    cumulative += probs[i];
    if (u < cumulative) {
      chosen = i;
      break;
    }
  }
  result.token = order[chosen];
  result.kept_count = static_cast<int32_t>(kept);
  result.sampling_logprob = static_cast<float>(std::log(probs[chosen] / kept_mass));
  result.model_logprob = static_cast<float>(row[result.token] - model_log_normaliser);
  return result;
}

}  // namespace

void SampleTokensRef(const float* logits, int64_t ld, int64_t rows, int64_t vocab,
                     const SamplingParams* params, SampledToken* out, core::ThreadPool* pool) {
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) out[r] = SampleRow(logits + r * ld, vocab, params[r]);
  };
  core::ParallelForOrInline(pool, 0, rows, 1, body);
}

}  // namespace v4rl::kernels::cpu
