// The generation loop of a rollout worker (reference precision, CPU): a batch of prompts of
// different lengths is prefilled (in chunks) and decoded step by step through model::DecodeStep,
// each sequence with its own decode state, sampling each new token with kernels/cpu/sampling.h.
//
// Each step carries, for every unfinished sequence, either its next prompt chunk or its last
// sampled token; a sequence leaves the batch when it samples a stop token or reaches
// max_new_tokens. Sequence b samples token j with (requests[b].seed, counter j), and its logits
// do not depend on the other sequences, so its tokens are the same whatever the batch size,
// order or composition.
// Returned per generated token: the id, its logprob under the sampling distribution and under the
// raw model, the kept top-k/top-p set size (keep-sampling-mask), and the routed experts of the
// step that produced it (keep-routing), plus the prompt positions' routing.
// Thread-safety: Generate only reads the Model; concurrent calls are safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cpu/sampling.h"
#include "model/forward.h"

namespace v4rl::rollout {

struct SamplingOptions {
  // Argmax (ties -> lowest id); the other fields are ignored. Default: false.
  bool greedy = false;
  // Logits are divided by it before the softmax; > 0. Default: 1.
  float temperature = 1.0f;
  // Nucleus mass kept after top-k, in (0, 1]; 1 keeps everything. Default: 1.
  float top_p = 1.0f;
  // Most probable tokens kept; <= 0 keeps all. Default: 0.
  int32_t top_k = 0;
};

struct GenerateOptions {
  // Most tokens generated per sequence; >= 1. Default: 16.
  int64_t max_new_tokens = 16;
  SamplingOptions sampling;
  // A sequence ends after sampling one of these (the stop token is returned). Default: none.
  std::vector<int32_t> stop_tokens;
  // Prompt tokens a sequence feeds per step; 0 feeds each prompt in one step. Any value gives the
  // same tokens; smaller ones bound a step's activations. Default: 0.
  int64_t prefill_chunk = 0;

  // InvalidArgument naming the first bad field: max_new_tokens < 1, temperature not finite and
  // > 0 or top_p outside (0, 1] (unless greedy), a stop token outside [0, vocab_size),
  // prefill_chunk < 0.
  absl::Status Validate(const model::ModelConfig& config) const;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // [prompt_len] token ids, prompt_len >= 1
  uint64_t seed = 0;            // this sequence's sampling stream
};

enum class FinishReason { kStop, kLength };

struct GenerationResult {
  std::vector<int32_t> tokens;           // [n], 1 <= n <= max_new_tokens
  std::vector<float> sampling_logprobs;  // [n] under the sampling distribution (0 when greedy)
  std::vector<float> model_logprobs;     // [n] log_softmax of the raw logits
  std::vector<int32_t> kept_counts;      // [n] size of the kept top-k/top-p set (1 when greedy)
  // [prompt_len + n - 1, num_layers, k] i32: the experts each layer routed position p's input
  // token to, p = 0 .. prompt_len + n - 2 (every position fed to the model: the inputs of a
  // training forward over prompt + tokens). Row prompt_len - 1 + j produced tokens[j].
  std::vector<int32_t> routed_experts;
  FinishReason finish_reason = FinishReason::kLength;  // kStop: tokens ends with a stop token
};

// InvalidArgument naming the request: an empty prompt, a prompt token outside [0, vocab_size), or
// prompt_len + max_new_tokens beyond max_position_embeddings. Generate's request checks, shared
// with the CUDA loop.
absl::Status ValidateGenerationRequests(const model::ModelConfig& config,
                                        absl::Span<const GenerationRequest> requests,
                                        int64_t max_new_tokens);

// Appends one sampled token to `result` (token, both logprobs, kept count). Returns true when it
// ends the sequence: a stop token of `options`, or max_new_tokens reached; finish_reason says which.
// Shared by the CPU and CUDA generation loops.
bool AppendSampledToken(const kernels::cpu::SampledToken& token, const GenerateOptions& options,
                        GenerationResult* result);

// Generates for every request; results[b] belongs to requests[b].
// Errors (InvalidArgument): options.Validate; a request with an empty prompt or a prompt token
// outside [0, vocab_size) (named with its request and index); prompt_len + max_new_tokens beyond
// the model's max_position_embeddings.
absl::StatusOr<std::vector<GenerationResult>> Generate(
    const model::Model& model, absl::Span<const GenerationRequest> requests,
    const GenerateOptions& options);

}  // namespace v4rl::rollout
