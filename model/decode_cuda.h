// Incremental decoding on the GPU in the `production` precision (the CUDA counterpart of
// model/decode.h): a CudaDecoder holds the decode state of many sequences on the device, carved
// from one block pool, and runs steps in which every sequence appends a prefill chunk of any size
// or one decoded token (a ragged batch; sequences at different positions share a step).
//
// Per sequence and layer the pool holds: the sliding-window K=V ring ([window, D] bf16, slot
// p mod window); for CSA/HCA the compressed entries ([capacity / m, D] bf16) and the
// compressor's pending rows (values bf16, gate scores with the positional bias f32; the previous
// complete window then the open one, as model/decode_state.h); for CSA the indexer's keys
// ([capacity / m, index_head_dim] bf16) and its compressor's rows. A sequence takes a contiguous
// run of pool blocks sized for its capacity (first fit); RemoveSequence gives them back.
//
// Same kernels and arithmetic as CudaModel::Forward (tokens through the same GEMMs, mHC, MoE;
// attention per sequence over [ring rows, new rows] ∪ entries; entries pooled from the same rows
// with the same kernels), so a chunked prefill followed by decode steps gives Forward's logits up
// to the row-count dependence of cuBLASLt's reductions (tests/model/cuda_decode_test.cc states
// the measured errors). Memory of a step is bounded by its token count, not by the context.
// Built only with V4RL_WITH_CUDA.
// Thread-safety: one Step at a time per decoder and per CudaModel (it uses the model's handle).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/forward_cuda.h"

namespace v4rl::model {

// One sequence's part of a step: `tokens` go to positions [num_tokens(sequence), + size).
struct CudaDecodeInput {
  int64_t sequence = 0;  // a CudaDecoder::AddSequence handle
  absl::Span<const int32_t> tokens;
};

struct CudaDecodeStepOptions {
  // Logits of every new token ([N, V], step order); otherwise of each input's last token
  // ([num_inputs, V]). Default: false.
  bool all_logits = false;
  // Queries scored per indexer GEMM within a sequence (fewer when the [chunk, heads, entries] f32
  // scores would pass 256 MiB).
  int64_t indexer_q_chunk = 512;
  // Replays for diffing against another run without the discrete flips of near-tied scores:
  // per layer [N, k] i32 host routed experts of the step's tokens (step order); per layer
  // [N, k'] i32 host indexer picks (ascending, -1 padding; undefined views for non-CSA layers).
  std::vector<core::TensorView> routing_replay;
  std::vector<core::TensorView> index_replay;
  // Routed expert ids of every new token and layer. Default: false.
  bool return_routing = false;
  // Leave the logits on the device (for sampling there). Default: false.
  bool device_logits = false;
  // Single-token inputs attend and score the indexer through the batched decode kernels
  // (kernels/cuda/decode_attention.h: one launch per layer for all of them, fp32 attention
  // probabilities); false: every input through the prefill kernels, one launch per sequence.
  bool batched_decode = true;
  // Steps of at most 512 tokens dispatch the MoE on the device (CudaForwardOptions::
  // device_moe_dispatch: no host sync per layer); longer steps (prefill chunks) and false: host
  // plan, cuBLASLt per expert (faster on hundreds of rows per expert).
  bool device_moe_dispatch = true;
  // Steps whose inputs are all single tokens (with batched_decode and device_moe_dispatch, no
  // replays, at most 512 inputs, V4RL_CUDA_PROFILE unset) replay a CUDA graph: the second
  // consecutive such step of a given input count, position bound (one past the latest position,
  // rounded up to 1,024 positions, or to 1/16 of it on long contexts) and fp8_simulation records
  // its launches once (kernels/cuda/graph.h; a key seen for one step alone, as when a batch
  // shrinks by a sequence a step, runs launch by launch), later ones upload their token ids,
  // positions and per-sequence state table and replay it — one launch instead of hundreds, the same
  // kernels with positions read on the device (model/attention_decode_graph_cuda.cc). Logits equal
  // the launch-by-launch step's up to the attention's key splits at small batches
  // (tests/model/cuda_decode_test.cc states the measured difference). The decoder keeps the 4 most
  // recently used graphs, each with the memory of one step's temporaries. Default: true.
  bool cuda_graphs = true;
  // The official FP8/FP4 simulation (CudaForwardOptions::fp8_simulation); the states then hold
  // the simulated K=V rows, entries and indexer keys, so a sequence keeps one setting throughout.
  bool fp8_simulation = false;
};

struct CudaDecodeStepOutput {
  // f32 [N, V] with all_logits, else [num_inputs, V]; on the host unless device_logits.
  core::Tensor logits;
  // With return_routing: per layer [N, k] i32 on the host, rows in step order.
  std::vector<core::Tensor> routed_experts;
};

class CudaDecoder {
 public:
  // A decoder over `model` (not owned; must outlive the decoder) with a pool of `pool_bytes` of
  // device memory in blocks of `block_bytes`. Errors: InvalidArgument on sizes < 1, device OOM.
  static absl::StatusOr<std::unique_ptr<CudaDecoder>> Create(CudaModel* model,
                                                             int64_t pool_bytes,
                                                             int64_t block_bytes = 1 << 20);
  ~CudaDecoder();
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  // Device bytes of one sequence's state for up to `capacity` positions.
  static int64_t SequenceBytes(const ModelConfig& config, int64_t capacity);

  // A new empty sequence of up to `capacity` positions. InvalidArgument when capacity is outside
  // [1, max_position_embeddings]; ResourceExhausted when no run of free blocks is large enough.
  absl::StatusOr<int64_t> AddSequence(int64_t capacity);
  // A new sequence holding a copy of `sequence`'s state (same capacity and positions): a shared
  // prompt prefilled once for several samples. NotFound / ResourceExhausted as above.
  absl::StatusOr<int64_t> ForkSequence(int64_t sequence);
  // Returns the sequence's blocks to the pool. NotFound for an unknown handle.
  absl::Status RemoveSequence(int64_t sequence);
  // Positions the sequence holds. NotFound for an unknown handle.
  absl::StatusOr<int64_t> num_tokens(int64_t sequence) const;
  int64_t num_blocks() const;
  int64_t free_blocks() const;
  // CUDA graphs of single-token steps recorded so far (CudaDecodeStepOptions::cuda_graphs),
  // and how many the decoder holds now.
  int64_t graphs_recorded() const;
  int64_t graphs_held() const;

  // Runs one step and advances each sequence by its token count.
  // InvalidArgument (naming the input): no inputs, an unknown or repeated sequence, no tokens,
  // ids outside the vocabulary, more tokens than the remaining capacity, replay shapes; no
  // state changes then. Internal on CUDA errors (the step's sequences are then undefined).
  absl::StatusOr<CudaDecodeStepOutput> Step(absl::Span<const CudaDecodeInput> inputs,
                                            const CudaDecodeStepOptions& options = {});

  struct Impl;

 private:
  explicit CudaDecoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace v4rl::model
