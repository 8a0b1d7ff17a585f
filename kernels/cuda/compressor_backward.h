// Backward of the compressor's gated pooling on the GPU (kernels/cpu/compressor_backward.h is the
// reference): per entry and channel, the softmax over the entry's slots is recomputed from the
// scores and dkv_s += w_s·g, dscore_s += w_s·(kv_s - pooled)·g. Each (row, channel) feeds exactly
// one entry, so the threads of an (entry, channel) write disjoint elements: deterministic, no
// atomics. Long windows (16 slots or more a thread) split an entry's slots over up to eight
// threads a channel whose partial softmax sums meet in shared memory (the HCA's 128 slots: 512
// blocks at 32 entries instead of 64). Gradients are ADDED to (the caller zeroes them); rows of an
// incomplete trailing window and series A of the last complete window receive nothing.
// Thread-safety: reentrant; the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// kv, score: [num_windows·ratio (or more rows), width] bf16|f32 contiguous, width = (overlap ? 2 :
// 1)·head_dim; dout: [num_windows - first_entry, head_dim] bf16|f32 contiguous;
// dkv, dscore: f32 shaped like kv.
absl::Status CompressPoolBackward(const core::TensorView& kv, const core::TensorView& score,
                                  int64_t num_windows, int64_t ratio, bool overlap,
                                  int64_t first_entry, const core::TensorView& dout,
                                  const core::TensorView& dkv, const core::TensorView& dscore);

}  // namespace v4rl::kernels::cuda
