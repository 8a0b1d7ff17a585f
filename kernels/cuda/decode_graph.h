// Decode-step kernels driven by device tables, so that a step of single-token inputs can be
// recorded once in a CUDA graph (graph.h) and replayed at later positions: where
// model/attention_decode_cuda.cc's host path builds item and copy lists from each sequence's
// position, these read row b's position (positions[b]) and its sequence's state pointers
// (table[b]) from device memory. Same arithmetic, bit for bit, as the host-driven kernels they
// stand in for (CompressPoolEntries in compressor.h, BatchCopy in rows.h, the item lists of
// decode_attention.h).
//
// Row b of a step is one new token at position p = positions[b] of the sequence whose state for
// the current layer is table[b]. table: device array of `rows` DecodeRowState; positions: [rows]
// i32 device; every other view a contiguous device view with `rows` rows. Rows belong to distinct
// sequences (their state writes are unordered), and p >= 0 lies within the state (the table and
// the positions are device data: unchecked). Errors: InvalidArgument naming the view whose dtype
// or shape is wrong, or the null table.
// Thread-safety: reentrant; kernels go to the launch stream (stream.h), nothing else (no copies,
// no staging, no host sync), so that each call can be captured.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/cuda/decode_attention.h"

namespace v4rl::kernels::cuda {

// One sequence's decode state of one layer (model/decode_cuda_state.h's LayerState), device
// pointers; null where the layer has no such part.
struct DecodeRowState {
  void* ring = nullptr;         // [window, D] bf16, position p in slot p mod window
  void* entries = nullptr;      // [capacity / m, D] bf16 (CSA, HCA)
  void* comp_kv = nullptr;      // [(2|1)·m, (2|1)·D] bf16: pending compressor rows (CSA, HCA)
  void* comp_score = nullptr;   // [(2|1)·m, (2|1)·D] f32: their gate scores
  void* index_keys = nullptr;   // [capacity / m, di] bf16 (CSA)
  void* index_kv = nullptr;     // [2m, 2·di] bf16: the indexer compressor's pending rows (CSA)
  void* index_score = nullptr;  // [2m, 2·di] f32
};

// The compressor's new rows into each sequence's pending rows, pooling the windows they complete.
// State: (comp_kv, comp_score), or (index_kv, index_score) with `indexer`; with overlap (CSA and
// the indexer) its 2m rows are the previous complete window then the open one, else m rows (the
// open window). kv: [rows, width] bf16; score: [rows, width] f32 (biased gate scores); width =
// (overlap ? 2 : 1) · dim. For each row: state row (overlap ? m : 0) + p mod m <- the new row.
// A row whose token completes its window ((p + 1) mod m == 0): out[b] <- the window's entry,
// pooled as CompressPoolEntries pools window p / m with with_previous = overlap && p / m >= 1,
// reading the state's rows (the same bits); then (overlap) the open window's rows move to the
// previous-window slots. Other rows: out[b] <- zeros. entry_positions[b] <- (p / m) · m (the
// entry's RoPE position). out: [rows, dim] bf16; entry_positions: [rows] i32, or undefined (null
// data: not written).
absl::Status DecodeCompressAppend(const DecodeRowState* table, bool indexer,
                                  const core::TensorView& positions, const core::TensorView& kv,
                                  const core::TensorView& score, int64_t ratio, bool overlap,
                                  const core::TensorView& out,
                                  const core::TensorView& entry_positions);
// The same, and in the same launch the RoPE rows of the entries' positions, for every row (rows
// that complete no window too): cos[b], sin[b] <- the bits RopeTableAt(inv_freq, entry positions,
// cos, sin) writes (elementwise.h; one arithmetic, rope_table.cuh), so that the entries can be
// rotated without a table launch. inv_freq: [half] f32; cos, sin: [rows, half] f32 (half =
// rope_dim / 2). All three must be given (InvalidArgument naming the first one that is wrong).
absl::Status DecodeCompressAppend(const DecodeRowState* table, bool indexer,
                                  const core::TensorView& positions, const core::TensorView& kv,
                                  const core::TensorView& score, int64_t ratio, bool overlap,
                                  const core::TensorView& out,
                                  const core::TensorView& entry_positions,
                                  const core::TensorView& inv_freq, const core::TensorView& cos,
                                  const core::TensorView& sin);

// For each row whose token completed a window: (indexer ? index_keys : entries)[p / m] <-
// entries[b]. entries: [rows, dim] bf16 (the pooled entries after norm, RoPE and quantisation).
absl::Status DecodeCompressCommit(const DecodeRowState* table, bool indexer,
                                  const core::TensorView& positions,
                                  const core::TensorView& entries, int64_t ratio);

// For each row b, in one launch: ring[p mod window] <- kv_rows[b] (table[b].ring), and items[b]
// (device, `rows` of them) <- the DecodeAttentionItem the host path builds for row b: q = q[b],
// ring = table[b].ring, own_kv = kv_rows[b], out = out[b], position = p; with ratio > 0 and
// e = (p + 1) / ratio > 0: comp = table[b].entries, num_comp = e, and with picks defined
// comp_idx = picks[b], comp_topk = picks.size(1) (else comp null, num_comp 0, comp_idx null,
// comp_topk 0). q, out: [rows, heads, D] bf16; kv_rows: [rows, D] bf16; picks: [rows, k] i32 or
// undefined (null data); window > 0: the ring's slots; ratio 0 for sliding-window layers. q and
// kv_rows rows must be 16-byte aligned (InvalidArgument), the table's ring and entries too
// (unchecked), as DecodeAttentionOnDevice reads them. The ring write may precede the attention on
// the items (the launch-by-launch path writes after it): an item reads the ring slots of positions
// p - min(p, window - 1) .. p - 1, never slot p mod window, and its own row from own_kv; rows are
// distinct sequences with rings of their own (a forked sequence's state is a copy).
absl::Status DecodeRingWriteAndAttentionItems(
    const DecodeRowState* table, const core::TensorView& positions, const core::TensorView& q,
    const core::TensorView& kv_rows, const core::TensorView& out, int64_t window, int64_t ratio,
    const core::TensorView& picks, DecodeAttentionItem* items);

// items[b] <- q = q[b], weights = weights[b], keys = table[b].index_keys, scores = scores[b],
// num_keys = (p + 1) / ratio. q: [rows, heads, di] bf16 (rows 16-byte aligned, and the table's
// index_keys, unchecked); weights: [rows, heads] f32; scores: [rows, ld] f32; ratio > 0.
absl::Status BuildDecodeIndexerItems(const DecodeRowState* table, const core::TensorView& positions,
                                     const core::TensorView& q, const core::TensorView& weights,
                                     const core::TensorView& scores, int64_t ratio,
                                     DecodeIndexerItem* items);

}  // namespace v4rl::kernels::cuda
