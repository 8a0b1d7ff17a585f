// CPU references for the per-token losses over vocabulary logits, with their gradients:
// chosen-token logprobs (optionally over the rollout's kept top-k/top-p support), entropies,
// masked cross entropy, and the full-vocabulary KL(student || teacher) that on-policy
// distillation minimises. Rows are processed one at a time, so nothing beyond one row of
// probabilities is materialised besides the gradient itself.
//
// Templated on the element type: float for training, double for finite-difference checks.
// Reductions accumulate in double for both. Thread-safety: reentrant; row-parallel through
// `pool` (nullptr = calling thread); results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// Per-row outputs of TokenLogprobsRef for the chosen target token.
//   logits [rows, vocab] T; targets [rows] i32 (a target < 0 marks a row to skip: outputs 0);
//   kept_counts [rows] i32 or nullptr: when > 0, the distribution is renormalised over the
//   kept_counts[r] largest logits of the row (ties broken towards the lower token id), the
//   support the sampler drew from; a target outside it gets logprob -inf.
//   logprobs [rows] T (required); entropies [rows] T or nullptr (entropy of the same support).
template <typename T>
void TokenLogprobsRef(const T* logits, const int32_t* targets, const int32_t* kept_counts,
                      int64_t rows, int64_t vocab, T* logprobs, T* entropies,
                      core::ThreadPool* pool);

// Gradient of  sum_r grad_logprobs[r] * logprob[r] + grad_entropies[r] * entropy[r]  with
// respect to the logits, written (not accumulated) into grad_logits [rows, vocab] T.
// grad_entropies may be nullptr. Arguments otherwise as in TokenLogprobsRef.
template <typename T>
void TokenLogprobsBackwardRef(const T* logits, const int32_t* targets, const int32_t* kept_counts,
                              int64_t rows, int64_t vocab, const T* grad_logprobs,
                              const T* grad_entropies, T* grad_logits, core::ThreadPool* pool);

// Mean cross entropy over rows with mask[r] != 0:  -sum_r mask[r] logprob[r] / sum_r mask[r].
// Returns the loss (0 when the mask is empty); grad_logits [rows, vocab] T or nullptr receives
// d loss / d logits. targets of masked-out rows are ignored (may be any value).
template <typename T>
double MaskedCrossEntropyRef(const T* logits, const int32_t* targets, const T* mask, int64_t rows,
                             int64_t vocab, T* grad_logits, core::ThreadPool* pool);

// Full-vocabulary KL(p || q) per row, p = softmax(student), q = softmax(teacher):
//   kl[r] = sum_j p_j (log p_j - log q_j)            (kl [rows] T, required)
// grad_student [rows, vocab] T or nullptr receives  weights[r] * d kl[r] / d student  =
//   weights[r] * p_j (log p_j - log q_j - kl[r]); weights [rows] T (nullptr = all ones).
// The teacher gets no gradient (it is frozen in distillation).
template <typename T>
void KlDivergenceRef(const T* student_logits, const T* teacher_logits, const T* weights,
                     int64_t rows, int64_t vocab, T* kl, T* grad_student, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
