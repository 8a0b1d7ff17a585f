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

// The key slots of the query at `position` when raw rows start at position kv_pos0: the window's
// raw rows first .. position in order, then comp_slots compressed slots, either the query's
// comp_topk picks (ids outside [0, num_comp) are the caller's to skip) or every visible entry.
struct QueryKeySlots {
  int64_t first;       // first raw position of the window (at least kv_pos0)
  int64_t num_window;  // position - first + 1
  int64_t comp_slots;
  V4RL_HOST_DEVICE int64_t total() const { return num_window + comp_slots; }
};

V4RL_HOST_DEVICE inline QueryKeySlots KeySlots(int64_t position, int64_t window, int64_t kv_pos0,
                                               bool has_comp, bool has_picks, int64_t comp_topk,
                                               int64_t ratio, int64_t num_comp) {
  QueryKeySlots slots;
  const int64_t begin = WindowBegin(position, window);
  slots.first = begin > kv_pos0 ? begin : kv_pos0;
  slots.num_window = position - slots.first + 1;
  slots.comp_slots = 0;
  if (has_comp) {
    const int64_t visible = has_picks ? 0 : NumVisibleCompressed(position, ratio);
    slots.comp_slots = has_picks ? comp_topk : (visible < num_comp ? visible : num_comp);
  }
  return slots;
}

// Where key slot j (< slots.total()) of a query lives: row `index` of the sequence's raw KV
// (compressed false) or compressed entry `index` (compressed true); index -1 for a skipped pick
// (outside [0, num_comp)). picks: the query's comp_topk picks, or null when the slots are every
// visible entry.
struct KeySlotSource {
  int64_t index;
  bool compressed;
};

V4RL_HOST_DEVICE inline KeySlotSource KeySlotAt(const QueryKeySlots& slots, int64_t j,
                                                int64_t kv_pos0, const int32_t* picks,
                                                int64_t num_comp) {
  if (j < slots.num_window) return {slots.first - kv_pos0 + j, false};
  int64_t w = j - slots.num_window;
  if (picks != nullptr) w = picks[w];
  return {w >= 0 && w < num_comp ? w : -1, true};
}

// The key slots a block of consecutive queries shares (the CUDA query-pair attention backward,
// kernels/cuda/attention_pair.cuh): the union of their windows' raw rows, positions
// [first, last query] in order, then compressed entries [0, num_entries), every entry one of them
// may take (the caller bounds it: without picks the last query's visible entries, with picks one
// past the largest pick). Query t's weight for a slot is SharedSlotWeight's.
struct SharedKeySlots {
  int64_t first;        // first raw position of the first query's window (at least kv_pos0)
  int64_t num_window;   // last_position - first + 1
  int64_t num_entries;  // compressed entries [0, num_entries)
  V4RL_HOST_DEVICE int64_t total() const { return num_window + num_entries; }
};

V4RL_HOST_DEVICE inline SharedKeySlots SharedSlots(int64_t first_position, int64_t last_position,
                                                   int64_t window, int64_t kv_pos0,
                                                   int64_t num_entries) {
  const int64_t begin = WindowBegin(first_position, window);
  SharedKeySlots slots;
  slots.first = begin > kv_pos0 ? begin : kv_pos0;
  slots.num_window = last_position - slots.first + 1;
  slots.num_entries = num_entries;
  return slots;
}

// How many times the query at `position` takes shared slot j: a raw row once inside its window
// (and at least kv_pos0), else 0; compressed entry e = j - num_window `entry_picks` times (the
// query's pick count of e, duplicates included), or, with entry_picks < 0 (every visible entry),
// once if e < min(NumVisibleCompressed(position, ratio), num_comp).
V4RL_HOST_DEVICE inline int SharedSlotWeight(const SharedKeySlots& slots, int64_t j,
                                             int64_t position, int64_t window, int64_t kv_pos0,
                                             int entry_picks, int64_t ratio, int64_t num_comp) {
  if (j < slots.num_window) {
    const int64_t p = slots.first + j;
    return p >= WindowBegin(position, window) && p >= kv_pos0 && p <= position ? 1 : 0;
  }
  if (entry_picks >= 0) return entry_picks;
  const int64_t e = j - slots.num_window;
  const int64_t visible = NumVisibleCompressed(position, ratio);
  return e < visible && e < num_comp ? 1 : 0;
}

}  // namespace v4rl::kernels::plan
