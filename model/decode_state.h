// Per-sequence decode state (spec §3.7): what incremental decoding keeps between steps so that
// chunked prefill and one-token decode give exactly what the full forward gives.
//
// Per layer: a ring of the last `sliding_window` K=V vectors (all layers); compressed entries and
// the compressor's partial-window rows (CSA and HCA); the indexer's keys and its compressor's rows
// (CSA). Nothing about the mHC streams is kept, nor yet the MTP block's ring (no speculative
// decoding so far). Reference precision: everything is f32, so the
// window ring, entries and indexer keys take twice the bytes of ComputeDecodeMemory(kBf16) and
// the compressor rows exactly its (already f32) bytes; decode_state_test checks both.
//
// Entry capacity is fixed at creation (floor(capacity / m) rows), so a state never reallocates;
// a pool can hand states out and take them back. The state owns its tensors; copying a
// DecodeState shares them. Also here: DecodeSpan and ForEachSpan, the layout of a decode step
// that the per-module decode functions share.
// Thread-safety: a state is mutated by the decode step that advances it; distinct states may be
// advanced concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/config.h"

namespace v4rl::model {

// Rows of a compressor that entries not yet emitted still need. With overlap (CSA, indexer) slots
// [0, m) hold the previous complete window's rows (series A of the next entry) and slots
// [m, 2m) the open window's rows; without overlap (HCA) slots [0, m) hold the open window's rows.
// The open window's row for position p sits in slot (overlap ? m : 0) + p mod m.
struct CompressorDecodeState {
  core::Tensor kv;     // [(overlap ? 2 : 1)·m, c·d] f32: x · wkvᵀ
  core::Tensor score;  // [(overlap ? 2 : 1)·m, c·d] f32: x · wgateᵀ + ape[p mod m]
};

struct LayerDecodeState {
  AttentionType type = AttentionType::kSliding;
  core::Tensor window_kv;  // [sliding_window, D] f32: slot p mod window holds position p's K=V
                           // (normalised, rotated)
  core::Tensor entries;    // [capacity / m, D] f32 (CSA, HCA): compressed entry w in row w
  CompressorDecodeState compressor;  // CSA, HCA
  core::Tensor indexer_keys;         // [capacity / m, index_head_dim] f32 (CSA)
  CompressorDecodeState indexer_compressor;  // CSA
};

struct DecodeState {
  int64_t num_tokens = 0;  // positions consumed; the next token goes to position num_tokens
  int64_t capacity = 0;    // most positions this state can hold
  std::vector<LayerDecodeState> layers;  // [config.num_layers]

  // Bytes of every tensor the state holds.
  int64_t AllocatedBytes() const;
};

// Where one sequence's new tokens sit in a decode step: rows [row, row + count) of the step's
// token-major [N, ...] tensors, at absolute positions [position, position + count).
struct DecodeSpan {
  int64_t row = 0;
  int64_t count = 0;
  int64_t position = 0;  // the state's num_tokens before the step
};

// Runs fn(s) for s in [0, num_spans) on the process thread pool: the per-sequence parts of a
// step run in parallel across sequences (kernels they call then run inline), or, for a single
// sequence, on the calling thread with parallel kernels. Results do not depend on the split.
void ForEachSpan(size_t num_spans, const std::function<void(size_t)>& fn);

// An empty state (num_tokens 0, zero-filled) for a sequence of up to `capacity` tokens of a model
// with `config` (already validated). InvalidArgument when capacity < 1 or capacity exceeds
// config.max_position_embeddings.
absl::StatusOr<DecodeState> CreateDecodeState(const ModelConfig& config, int64_t capacity);

}  // namespace v4rl::model
