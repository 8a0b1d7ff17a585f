// Private to model/decode_cuda.cc, decode_graph_cuda.cc and attention_decode*_cuda.cc: one
// sequence's decode state in the CudaDecoder's block pool (per layer: the window ring, compressed
// entries, compressor rows still pooling, indexer keys), the state of one decode step that
// CudaModel::Impl::AttentionDecode reads (model/forward_cuda_impl.h), the decoder's recorded
// CUDA graphs of single-token steps, and the decoder's Impl.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "kernels/cuda/decode_graph.h"
#include "kernels/cuda/graph.h"
#include "model/decode_cuda.h"
#include "model/forward_cuda_impl.h"

namespace v4rl::model {
namespace cuda_internal {

// Device views of one sequence's state for one layer (inside the pool).
struct LayerState {
  TensorView ring;                   // [window, D] bf16
  TensorView entries;                // [capacity / m, D] bf16 (CSA, HCA)
  TensorView comp_kv, comp_score;    // [(2|1)·m, c·D] bf16 / f32 (CSA, HCA)
  TensorView index_keys;             // [capacity / m, di] bf16 (CSA)
  TensorView index_kv, index_score;  // [2m, 2·di] bf16 / f32 (CSA)
};

struct Sequence {
  int64_t first_block = 0, blocks = 0;
  int64_t capacity = 0, num_tokens = 0;
  std::vector<LayerState> layers;
};

struct StepSpan {
  int64_t row = 0, count = 0, position = 0;
  Sequence* sequence = nullptr;
};

struct DecodeStepState {
  std::vector<StepSpan> spans;
  Tensor positions;                   // [N] i32 device
  Tensor main_cos, main_sin;          // [N, rd / 2] f32 device
  Tensor compress_cos, compress_sin;  // [N, rd / 2] f32 device
  const CudaDecodeStepOptions* options = nullptr;
  int64_t layer = 0;
  // Graph steps (every input one token; decode_graph_cuda.cc): row r's state for layer l is
  // table[l · N + r] (device), and position_bound exceeds every row's position (it sizes the
  // indexer's scores and the attention's key splits instead of the positions themselves).
  const kc::DecodeRowState* table = nullptr;
  int64_t position_bound = 0;

  // The RoPE rows of the step's tokens for a layer of `type`: the main table's for
  // sliding-window layers, the compressed layers' otherwise. [N, rd / 2] f32 device.
  TensorView cos(AttentionType type) const {
    return (type == AttentionType::kSliding ? main_cos : compress_cos).view();
  }
  TensorView sin(AttentionType type) const {
    return (type == AttentionType::kSliding ? main_sin : compress_sin).view();
  }
};

// The body a decode step shares with its graph recording: both RoPE tables' rows from
// st.positions (into st), the embedding of m.token_ids, every block, then the hc_head collapse and
// model norm. Returns the head's input [N, hidden] bf16, one row per token.
absl::StatusOr<Tensor> DecodeLayers(CudaModel::Impl& m, DecodeStepState& st);

// Whether single-token inputs fit the batched decode kernels (kernels/cuda/decode_attention.h).
inline bool BatchedDecodeKernelsFit(const ModelConfig& config) {
  return config.head_dim % 32 == 0 && config.head_dim <= 512 && config.index_head_dim % 32 == 0 &&
         config.index_head_dim <= 512 &&
         config.index_n_heads * config.index_head_dim * 4 <= 48 * 1024;
}

// One recorded single-token step: its inputs (uploaded before each replay), and the outputs it
// leaves in the graph's memory.
struct DecodeGraph {
  std::unique_ptr<kc::CudaGraph> graph;  // first member: destroyed after the tensors in its memory
  Tensor inputs;                         // [2, N] i32 device: token ids, then positions
  Tensor ids, positions;                 // [N] i32 views of inputs' rows
  Tensor table;                          // [layers · N] DecodeRowState device (bytes)
  std::vector<kc::DecodeRowState> host_table;  // the table last uploaded
  Tensor logits;                               // [N, V] f32 (graph memory)
  std::vector<Tensor> routed;                  // per layer [N, k] i32 (graph memory)
  int64_t last_use = 0;
};

// Recorded graphs by (rows, position bound, FP8 simulation).
using DecodeGraphKey = std::tuple<int64_t, int64_t, bool>;

// The address of row `row` of a view whose rows are its first dimension, and a row's bytes.
inline char* Ptr(const TensorView& v, int64_t row) {
  return static_cast<char*>(v.data) + row * (v.nbytes() / std::max<int64_t>(v.shape[0], 1));
}
inline int64_t RowBytes(const TensorView& v) {
  return core::DTypeBytes(v.dtype, v.numel() / v.shape[0]);
}

// The smallest bound above `end` (one past the step's last position) on a grid of 1,024
// positions, coarser for long contexts (at most 1/16 above end): a recorded graph serves the
// steps until a position reaches it.
inline int64_t DecodePositionBound(int64_t end) {
  int64_t granule = 1024;
  while (granule * 16 < end) granule *= 2;
  return (end + granule - 1) / granule * granule;
}

}  // namespace cuda_internal

struct CudaDecoder::Impl {
  CudaModel* model = nullptr;
  Tensor pool;
  int64_t block_bytes = 0;
  std::vector<bool> used;  // per block
  std::map<int64_t, std::unique_ptr<Sequence>> sequences;
  int64_t next_id = 0;
  // Recorded single-token steps (at most kMaxGraphs; the least recently used goes first).
  static constexpr size_t kMaxGraphs = 4;
  std::map<DecodeGraphKey, std::unique_ptr<DecodeGraph>> graphs;
  int64_t graph_clock = 0;
  int64_t graphs_recorded = 0;
  std::optional<DecodeGraphKey> previous_key;  // the previous step's (none: not a graph step)

  // The graph key of a step of `spans` when it may run as a CUDA graph
  // (CudaDecodeStepOptions::cuda_graphs), else none.
  std::optional<DecodeGraphKey> GraphKey(const std::vector<StepSpan>& spans,
                                         const CudaDecodeStepOptions& options) const;
  // Whether the step of `key` replays a graph: one is held, or the previous step had the same
  // key (a key seen once, e.g. a batch shrinking by one sequence a step, runs launch by launch
  // instead of paying a recording no later step replays). Remembers `key` for the next step.
  bool ReplayStep(const std::optional<DecodeGraphKey>& key);
  // The step through the graph of `key` (recorded first when none is held).
  absl::StatusOr<CudaDecodeStepOutput> GraphStep(absl::Span<const CudaDecodeInput> inputs,
                                                 const std::vector<StepSpan>& spans,
                                                 const CudaDecodeStepOptions& options,
                                                 const DecodeGraphKey& key);
};

}  // namespace v4rl::model
