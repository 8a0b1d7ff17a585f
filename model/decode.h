// Incremental decoding of the V4 model (reference precision, CPU): one step appends new tokens to
// a ragged batch of sequences, each with its own DecodeState, and returns their logits. A
// sequence's new tokens may be a prefill chunk of any size or one decoded token, and sequences
// at different positions share a step (what continuous batching needs). Any split of a sequence
// into steps gives the logits Forward gives for the whole sequence (decode_parity_test).
//
// Per-token work (embedding, mHC, norms, projections, MoE, head) runs over the step's N tokens
// at once; attention, compressors and the indexer run per sequence against its state.
// Thread-safety: a step mutates the states it is given; the Model is only read, so concurrent
// steps over disjoint states are safe (they share the process thread pool).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor.h"
#include "model/decode_state.h"
#include "model/forward.h"

namespace v4rl::model {

// One sequence's part of a step: `tokens` go to positions [state->num_tokens, + tokens.size()).
struct DecodeInput {
  DecodeState* state = nullptr;
  absl::Span<const int32_t> tokens;
};

struct DecodeStepOptions {
  // Logits for every new token; otherwise only for the last new token of each sequence (what
  // sampling needs). Default: false.
  bool all_logits = false;
  // Routed expert ids of every new token and layer. Default: false.
  bool return_routing = false;
};

struct DecodeStepOutput {
  // [N, V] f32 with all_logits (rows in input order, each sequence's tokens in order), else
  // [num_inputs, V] f32.
  core::Tensor logits;
  // With return_routing: per layer [N, k] i32, the experts of each new token (rank order; hash
  // layers: tid2eid order); rows in step order (inputs in order, each input's tokens in order).
  std::vector<core::Tensor> routed_experts;
};

// Runs one step and advances each state's num_tokens by its token count.
// Errors (InvalidArgument, naming the input index): no inputs; a null state; the same state
// twice; a state made for a different layer count; no tokens; a token id outside
// [0, vocab_size); more tokens than the state's remaining capacity. On error no state changes.
absl::StatusOr<DecodeStepOutput> DecodeStep(const Model& model,
                                            absl::Span<const DecodeInput> inputs,
                                            const DecodeStepOptions& options = {});

}  // namespace v4rl::model
