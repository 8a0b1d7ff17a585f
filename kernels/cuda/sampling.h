// Token sampling on the GPU with the semantics and seeds of kernels/cpu/sampling.h: greedy
// argmax (ties to the lowest id), or temperature, top-k (by logit, ties to the lower id), top-p
// over the renormalised top-k, and an inverse-CDF draw with u = core::Rng(seed).UniformDouble(
// counter) (the same Philox-4x32-10 stream, bit for bit). Probabilities and sums are in double as
// on the CPU; sums run in a parallel order, so a kept-set boundary or a draw that lands within
// ~1e-15 of a cumulative sum may resolve differently (never seen on random logits).
//
// Each non-greedy row is ordered by one segmented radix sort of 64-bit keys (the logit's order
// key, then the inverted id), so ties need no sort stability; then one block per row reduces and
// scans. Synchronous: results come back to the host.
// Thread-safety: reentrant with distinct workspaces; the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/tensor.h"
#include "kernels/cpu/sampling.h"

namespace v4rl::kernels::cuda {

// Bytes of device workspace SampleTokens needs for `rows` rows of `vocab` logits.
int64_t SampleTokensWorkspaceBytes(int64_t rows, int64_t vocab);

// logits: [rows, vocab] f32 contiguous device view (rows · vocab < 2^31); params, out: host
// spans of `rows` entries; workspace: device view of >= SampleTokensWorkspaceBytes bytes (any
// dtype). InvalidArgument on bad views or parameters (temperature <= 0 without greedy, top_p
// outside (0, 1]); Internal on a CUDA error.
absl::Status SampleTokens(const core::TensorView& logits,
                          absl::Span<const cpu::SamplingParams> params,
                          const core::TensorView& workspace, absl::Span<cpu::SampledToken> out);

}  // namespace v4rl::kernels::cuda
