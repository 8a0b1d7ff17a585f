// The LM head and the masked cross entropy with their gradients over chunks of rows, so no
// [T, V] logits tensor exists: per chunk of `chunk_rows` rows, logits = hidden · headᵀ (f32
// [chunk, V] scratch), MaskedCrossEntropy writes its loss terms and the logits' gradient in place
// (bf16 copy for bf16 inputs), then dhidden += dlogits · head and dhead += dlogitsᵀ · hidden
// (kernels/cuda/linear_backward.h). Scratch: chunk_rows · V floats (plus as many bf16 values for
// bf16 inputs), stream-ordered.
// Thread-safety: as the BlasHandle; the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"

namespace v4rl::kernels::cuda {

struct ChunkedCrossEntropyArgs {
  core::TensorView hidden;   // [T, H] f32|bf16 row view (the final norm's output)
  core::TensorView head;     // [V, H] same dtype, row view
  core::TensorView targets;  // [T] i32 device
  core::TensorView mask;     // [T] f32 device
  core::TensorView dhidden;  // [T, H] f32 (or bf16 for bf16 inputs) row view, += ; or empty
  core::TensorView dhead;    // [V, H] f32 (or bf16), += ; or empty (frozen head)
  int64_t chunk_rows = 1024;
};

// Returns the masked mean cross entropy (-Σ mask·logprob / Σ mask, 0 for an empty mask) and
// accumulates the gradients. Synchronises once to read the mask total and once for the loss.
absl::StatusOr<double> ChunkedCrossEntropy(BlasHandle& handle, const ChunkedCrossEntropyArgs& args);

}  // namespace v4rl::kernels::cuda
