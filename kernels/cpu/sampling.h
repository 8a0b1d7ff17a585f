// CPU reference of token sampling from logits, with the semantics every generation path (CPU
// and CUDA) shares:
//   1. greedy: the argmax (ties -> lowest id); kept-set size 1, sampling logprob 0.
//   2. otherwise: probabilities softmax(logits / temperature); keep the top_k most probable
//      (top_k <= 0: all); then keep the smallest prefix, in descending probability (ties -> lower
//      id), whose mass reaches top_p (top_p >= 1: all); renormalise over the kept set and draw by
//      inverse CDF over that order with u = Rng(seed).UniformDouble(counter).
// Per row outputs: the token, its logprob under the sampling distribution (renormalised, after
// temperature), its logprob under the raw model (log_softmax of the unscaled logits), and the
// kept-set size. Because the kept set is the top-`kept` tokens by logit, the learner can rebuild
// it from the size alone (keep-sampling-mask).
// Every row depends only on its own logits, seed and counter: results do not depend on batch
// composition, order or thread count.
// Thread-safety: reentrant; row-parallel through `pool` (nullptr = calling thread).
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

struct SamplingParams {
  bool greedy = false;
  float temperature = 1.0f;  // > 0 unless greedy
  float top_p = 1.0f;        // in (0, 1]
  int32_t top_k = 0;         // <= 0: no top-k
  uint64_t seed = 0;         // per sequence
  uint64_t counter = 0;      // per step of that sequence (e.g. its token position)
};

struct SampledToken {
  int32_t token = -1;
  float sampling_logprob = 0;  // log p_sampling(token)
  float model_logprob = 0;     // log softmax(logits)[token]
  int32_t kept_count = 0;      // size of the top-k/top-p support
};

// logits [rows, vocab] f32 (row stride ld); params [rows]; out [rows].
void SampleTokensRef(const float* logits, int64_t ld, int64_t rows, int64_t vocab,
                     const SamplingParams* params, SampledToken* out, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
