// The compressor's gated pooling (spec §3.4) on the GPU: each complete window of `ratio` rows
// becomes one entry, a per-channel softmax over the window's slots of the gate scores weighting
// the values; with overlap (CSA, indexer) the previous window's series A joins as extra slots
// (none for entry 0). Same slot order and arithmetic as kernels/cpu/compressor.h, fp32 math on
// bf16 or f32 inputs. One thread per (entry, channel).
// Thread-safety: reentrant; the kernel goes to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// kv, score: [num_windows · ratio, (overlap ? 2 : 1) · head_dim] bf16|f32 contiguous;
// out: [num_windows - first_entry, head_dim] bf16|f32 contiguous (entries first_entry ..).
absl::Status CompressPool(const core::TensorView& kv, const core::TensorView& score,
                          int64_t ratio, bool overlap, int64_t first_entry,
                          const core::TensorView& out);

// One entry of a batched pooling: window `window` of the rows (rows [window · ratio, + ratio)),
// with the previous window's series A as extra slots when `with_previous` (overlap only).
struct PoolEntry {
  int32_t window = 0;
  bool with_previous = false;
};

// CompressPool for entries of many sequences at once (the decode step's completed windows):
// out[i] pools entries[i] of kv/score ([rows, (overlap ? 2 : 1) · head_dim], rows a multiple
// of ratio). out: [entries.size(), head_dim]. Same arithmetic as CompressPool; the entry list
// travels in the launch parameters (no upload, no sync; one launch per 512 entries).
absl::Status CompressPoolEntries(const core::TensorView& kv, const core::TensorView& score,
                                 int64_t ratio, bool overlap, absl::Span<const PoolEntry> entries,
                                 const core::TensorView& out);

}  // namespace v4rl::kernels::cuda
