#include "rollout/generate.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/cpu/sampling.h"
#include "model/decode.h"

namespace v4rl::rollout {
namespace {

// A sequence being generated.
struct Sequence {
  const GenerationRequest* request = nullptr;
  model::DecodeState state;
  GenerationResult* result = nullptr;
  bool done = false;
};

}  // namespace

absl::Status GenerateOptions::Validate(const model::ModelConfig& config) const {
  if (max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_new_tokens must be >= 1, got %d", max_new_tokens));
  }
  if (!sampling.greedy) {
    if (!(std::isfinite(sampling.temperature) && sampling.temperature > 0)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("temperature must be finite and > 0, got %g", sampling.temperature));
    }
    if (!(sampling.top_p > 0 && sampling.top_p <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("top_p must be in (0, 1], got %g", sampling.top_p));
    }
  }
  for (int32_t token : stop_tokens) {
    if (token < 0 || token >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "stop token %d is outside the vocabulary [0, %d)", token, config.vocab_size));
    }
  }
  if (prefill_chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prefill_chunk must be >= 0, got %d", prefill_chunk));
  }
  return absl::OkStatus();
}

absl::Status ValidateGenerationRequests(const model::ModelConfig& config,
                                        absl::Span<const GenerationRequest> requests,
                                        int64_t max_new_tokens) {
  for (size_t b = 0; b < requests.size(); ++b) {
    const std::vector<int32_t>& prompt = requests[b].prompt;
    if (prompt.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("request %d has an empty prompt", b));
    }
    for (size_t t = 0; t < prompt.size(); ++t) {
      if (prompt[t] < 0 || prompt[t] >= config.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrFormat("request %d: prompt[%d] = %d is outside the vocabulary [0, %d)", b,
                            t, prompt[t], config.vocab_size));
      }
    }
    const int64_t length = static_cast<int64_t>(prompt.size());
    if (length + max_new_tokens > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request %d: prompt of %d tokens + max_new_tokens %d = %d exceeds the model's context "
          "(max_position_embeddings = %d)",
          b, length, max_new_tokens, length + max_new_tokens, config.max_position_embeddings));
    }
  }
  return absl::OkStatus();
}

bool AppendSampledToken(const kernels::cpu::SampledToken& token, const GenerateOptions& options,
                        GenerationResult* result) {
  result->tokens.push_back(token.token);
  result->sampling_logprobs.push_back(token.sampling_logprob);
  result->model_logprobs.push_back(token.model_logprob);
  result->kept_counts.push_back(token.kept_count);
  const bool stop = std::find(options.stop_tokens.begin(), options.stop_tokens.end(),
                              token.token) != options.stop_tokens.end();
  if (!stop && static_cast<int64_t>(result->tokens.size()) < options.max_new_tokens) return false;
  result->finish_reason = stop ? FinishReason::kStop : FinishReason::kLength;
  return true;
}

absl::StatusOr<std::vector<GenerationResult>> Generate(
    const model::Model& model, absl::Span<const GenerationRequest> requests,
    const GenerateOptions& options) {
  const model::ModelConfig& config = model.config;
  V4RL_RETURN_IF_ERROR(options.Validate(config));
  V4RL_RETURN_IF_ERROR(ValidateGenerationRequests(config, requests, options.max_new_tokens));
  const int64_t num_layers = config.num_layers, k = config.num_experts_per_tok;
  const int64_t vocab = config.vocab_size;

  // One decode state per sequence, sized for every position it will feed (the last sampled
  // token is never fed).
  std::vector<GenerationResult> results(requests.size());
  std::vector<Sequence> sequences(requests.size());
  for (size_t b = 0; b < requests.size(); ++b) {
    const int64_t prompt_len = static_cast<int64_t>(requests[b].prompt.size());
    V4RL_ASSIGN_OR_RETURN(sequences[b].state,
                          model::CreateDecodeState(config, prompt_len + options.max_new_tokens - 1));
    sequences[b].request = &requests[b];
    sequences[b].result = &results[b];
  }

  while (true) {
    // This step's inputs: the next prompt chunk, or the last sampled token.
    std::vector<model::DecodeInput> inputs;
    std::vector<Sequence*> stepping;
    for (Sequence& seq : sequences) {
      if (seq.done) continue;
      const std::vector<int32_t>& prompt = seq.request->prompt;
      const int64_t fed = seq.state.num_tokens;
      const int64_t prompt_left = static_cast<int64_t>(prompt.size()) - fed;
      if (prompt_left > 0) {
        const int64_t count =
            options.prefill_chunk > 0 ? std::min(options.prefill_chunk, prompt_left) : prompt_left;
        inputs.push_back({&seq.state, absl::MakeConstSpan(prompt.data() + fed, count)});
      } else {
        inputs.push_back({&seq.state, absl::MakeConstSpan(&seq.result->tokens.back(), 1)});
      }
      stepping.push_back(&seq);
    }
    if (inputs.empty()) break;
    V4RL_ASSIGN_OR_RETURN(const model::DecodeStepOutput out,
                          model::DecodeStep(model, inputs, {.return_routing = true}));

    // Keep each fed token's routing, then sample for the sequences whose prompt is all in.
    std::vector<kernels::cpu::SamplingParams> params;
    std::vector<int64_t> rows;
    int64_t row = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      GenerationResult& result = *stepping[i]->result;
      for (size_t t = 0; t < inputs[i].tokens.size(); ++t, ++row) {
        for (int64_t l = 0; l < num_layers; ++l) {
          const int32_t* ids = out.routed_experts[l].data<int32_t>() + row * k;
          result.routed_experts.insert(result.routed_experts.end(), ids, ids + k);
        }
      }
      if (stepping[i]->state.num_tokens < static_cast<int64_t>(stepping[i]->request->prompt.size())) {
        continue;
      }
      const SamplingOptions& s = options.sampling;
      params.push_back({.greedy = s.greedy,
                        .temperature = s.temperature,
                        .top_p = s.top_p,
                        .top_k = s.top_k,
                        .seed = stepping[i]->request->seed,
                        .counter = static_cast<uint64_t>(result.tokens.size())});
      rows.push_back(static_cast<int64_t>(i));
    }
    if (rows.empty()) continue;
    // Gather the logits rows to sample (out.logits holds one row per input).
    std::vector<float> logits(rows.size() * vocab);
    for (size_t r = 0; r < rows.size(); ++r) {
      std::copy(out.logits.data<float>() + rows[r] * vocab,
                out.logits.data<float>() + (rows[r] + 1) * vocab, logits.data() + r * vocab);
    }
    std::vector<kernels::cpu::SampledToken> sampled(rows.size());
    kernels::cpu::SampleTokensRef(logits.data(), vocab, static_cast<int64_t>(rows.size()), vocab,
                                  params.data(), sampled.data(), &core::ThreadPool::Default());
    for (size_t r = 0; r < rows.size(); ++r) {
      Sequence& seq = *stepping[rows[r]];
      if (AppendSampledToken(sampled[r], options, seq.result)) {
        seq.done = true;
        seq.state = model::DecodeState();  // release its memory now
      }
    }
  }
  return results;
}

}  // namespace v4rl::rollout
