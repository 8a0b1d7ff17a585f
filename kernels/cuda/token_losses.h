// Per-token losses over vocabulary logits on the GPU, with their gradients, matching
// kernels/cpu/token_losses.h (kept_counts support, entropies, masked cross entropy, full-vocabulary
// KL(student || teacher)). One block per row; every kernel only reads its rows of logits and
// writes its rows of gradient, so a caller runs the head GEMM, the loss and its gradient over
// chunks of rows and never holds more than a [chunk, V] fp32 block (the gradient may overwrite
// the logits in place: grad_logits may be the same view as logits).
//
// Logits bf16|f32 row views (rank 2, unit inner stride); per-row inputs and outputs f32 / i32
// contiguous device arrays. Arithmetic in fp32 (the CPU references accumulate in double).
// Speed: without kept_counts, a row whose V is a multiple of 4 (f32 logits) or 8 (bf16) and at most
// 32,768, with 16-byte aligned rows of logits and gradient (data and row stride), is read once into
// registers with 16-byte loads (the training step's cross entropy); other rows take a general
// kernel that streams them. Both give the same results up to fp32 summation order.
// Thread-safety: reentrant; work is queued on the launch stream (stream.h).
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// logits [R, V]; targets [R] i32 (< 0: skipped row, outputs 0); kept_counts [R] i32 or empty
// (> 0: renormalise over the kept_counts[r] largest logits, ties to the lower token id; a target
// outside gets -inf); logprobs [R] f32; entropies [R] f32 or empty.
absl::Status TokenLogprobs(const core::TensorView& logits, const core::TensorView& targets,
                           const core::TensorView& kept_counts, const core::TensorView& logprobs,
                           const core::TensorView& entropies);

// grad_logits [R, V] bf16|f32 <- d(Σ_r grad_logprobs[r]·logprob[r] + grad_entropies[r]·H[r]) /
// d logits (written, not added). grad_logprobs [R] f32; grad_entropies [R] f32 or empty.
absl::Status TokenLogprobsBackward(const core::TensorView& logits, const core::TensorView& targets,
                                   const core::TensorView& kept_counts,
                                   const core::TensorView& grad_logprobs,
                                   const core::TensorView& grad_entropies,
                                   const core::TensorView& grad_logits);

// A chunk of a masked mean cross entropy: losses[r] = -mask[r]·logprob[r]·inv_mask_total (the
// loss is the sum of losses over every chunk; inv_mask_total = 1 / Σ mask over ALL rows, 0 for
// an empty mask), and grad_logits (or empty) <- its gradient. Rows with mask 0 ignore targets.
absl::Status MaskedCrossEntropy(const core::TensorView& logits, const core::TensorView& targets,
                                const core::TensorView& mask, float inv_mask_total,
                                const core::TensorView& losses,
                                const core::TensorView& grad_logits);

// kl[r] = KL(softmax(student_r) || softmax(teacher_r)) over the full vocabulary; grad_student (or
// empty) <- weights[r]·dkl[r]/dstudent (weights [R] f32 or empty = ones). student, teacher:
// [R, V] bf16|f32 row views (dtypes may differ).
absl::Status KlDivergence(const core::TensorView& student, const core::TensorView& teacher,
                          const core::TensorView& weights, const core::TensorView& kl,
                          const core::TensorView& grad_student);

}  // namespace v4rl::kernels::cuda
