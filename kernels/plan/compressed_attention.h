// Position arithmetic of V4's attention key sets, shared by prefill, decode and CUDA kernels.
//
// A query at absolute position t sees (spec §3.1):
//  - the raw KV of positions [WindowBegin(t, window), t] (the window includes the query), and
//  - compressed entries w < NumVisibleCompressed(t, ratio): only windows whose last token is <= t
//    (pitfall 6). Entry w pools tokens [w·ratio, (w+1)·ratio) and is rotated at position w·ratio
//    (pitfall 5).
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "kernels/plan/host_device.h"

namespace v4rl::kernels::plan {

// First position of the sliding window of a query at `position`.
V4RL_HOST_DEVICE inline int64_t WindowBegin(int64_t position, int64_t window) {
  const int64_t begin = position - window + 1;
  return begin > 0 ? begin : 0;
}

// Compressed entries visible to a query at `position`: floor((position + 1) / ratio).
V4RL_HOST_DEVICE inline int64_t NumVisibleCompressed(int64_t position, int64_t ratio) {
  return (position + 1) / ratio;
}

// Complete entries once `num_tokens` tokens have been seen: floor(num_tokens / ratio).
V4RL_HOST_DEVICE inline int64_t NumCompressedEntries(int64_t num_tokens, int64_t ratio) {
  return num_tokens / ratio;
}

// RoPE position of compressed entry `entry`: the first token of its window.
V4RL_HOST_DEVICE inline int64_t CompressedEntryPosition(int64_t entry, int64_t ratio) {
  return entry * ratio;
}

}  // namespace v4rl::kernels::plan
