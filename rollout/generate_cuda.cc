#include "rollout/generate_cuda.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/rows.h"
#include "kernels/cuda/sampling.h"
#include "model/decode_cuda.h"

namespace v4rl::rollout {
namespace {

namespace kc = kernels::cuda;
using core::DType;
using core::Tensor;

struct Sequence {
  const GenerationRequest* request = nullptr;
  int64_t handle = -1;
  int64_t fed = 0;
  GenerationResult* result = nullptr;
  bool done = false;
};

}  // namespace

absl::StatusOr<std::vector<GenerationResult>> GenerateCuda(
    const model::Model& model, model::CudaModel* gpu, absl::Span<const GenerationRequest> requests,
    const GenerateOptions& options, const CudaGenerateOptions& cuda_options) {
  const model::ModelConfig& config = model.config;
  V4RL_RETURN_IF_ERROR(options.Validate(config));
  V4RL_RETURN_IF_ERROR(ValidateGenerationRequests(config, requests, options.max_new_tokens));
  const int64_t num_layers = config.num_layers, k = config.num_experts_per_tok;
  const int64_t vocab = config.vocab_size;
  constexpr int64_t kBlock = 1 << 20;
  auto capacity = [&](const GenerationRequest& r) {
    return static_cast<int64_t>(r.prompt.size()) + options.max_new_tokens - 1;
  };
  int64_t pool = 0;
  for (const GenerationRequest& r : requests) {
    pool += (model::CudaDecoder::SequenceBytes(config, capacity(r)) + kBlock - 1) / kBlock * kBlock;
  }
  V4RL_ASSIGN_OR_RETURN(auto decoder,
                        model::CudaDecoder::Create(gpu, std::max<int64_t>(pool, kBlock), kBlock));
  std::vector<GenerationResult> results(requests.size());
  std::vector<Sequence> sequences(requests.size());
  for (size_t b = 0; b < requests.size(); ++b) {
    V4RL_ASSIGN_OR_RETURN(sequences[b].handle, decoder->AddSequence(capacity(requests[b])));
    sequences[b].request = &requests[b];
    sequences[b].result = &results[b];
  }

  while (true) {
    std::vector<model::CudaDecodeInput> inputs;
    std::vector<Sequence*> stepping;
    for (Sequence& seq : sequences) {
      if (seq.done) continue;
      const std::vector<int32_t>& prompt = seq.request->prompt;
      const int64_t prompt_left = static_cast<int64_t>(prompt.size()) - seq.fed;
      if (prompt_left > 0) {
        const int64_t count =
            options.prefill_chunk > 0 ? std::min(options.prefill_chunk, prompt_left) : prompt_left;
        inputs.push_back({seq.handle, absl::MakeConstSpan(prompt.data() + seq.fed, count)});
      } else {
        inputs.push_back({seq.handle, absl::MakeConstSpan(&seq.result->tokens.back(), 1)});
      }
      stepping.push_back(&seq);
    }
    if (inputs.empty()) break;
    model::CudaDecodeStepOptions step_options;
    step_options.return_routing = true;
    step_options.device_logits = true;
    step_options.fp8_simulation = cuda_options.fp8_simulation;
    step_options.cuda_graphs = cuda_options.cuda_graphs;
    V4RL_ASSIGN_OR_RETURN(const model::CudaDecodeStepOutput out,
                          decoder->Step(inputs, step_options));

    std::vector<kernels::cpu::SamplingParams> params;
    std::vector<int64_t> rows;
    int64_t row = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      Sequence& seq = *stepping[i];
      GenerationResult& result = *seq.result;
      for (size_t t = 0; t < inputs[i].tokens.size(); ++t, ++row) {
        for (int64_t l = 0; l < num_layers; ++l) {
          const int32_t* ids = out.routed_experts[l].data<int32_t>() + row * k;
          result.routed_experts.insert(result.routed_experts.end(), ids, ids + k);
        }
      }
      seq.fed += static_cast<int64_t>(inputs[i].tokens.size());
      if (seq.fed < static_cast<int64_t>(seq.request->prompt.size())) continue;
      const SamplingOptions& s = options.sampling;
      params.push_back({.greedy = s.greedy,
                        .temperature = s.temperature,
                        .top_p = s.top_p,
                        .top_k = s.top_k,
                        .seed = seq.request->seed,
                        .counter = static_cast<uint64_t>(result.tokens.size())});
      rows.push_back(static_cast<int64_t>(i));
    }
    if (rows.empty()) continue;
    const int64_t num_rows = static_cast<int64_t>(rows.size());
    Tensor logits = out.logits;
    if (num_rows != static_cast<int64_t>(inputs.size())) {  // gather the rows to sample
      logits = Tensor::Empty(DType::kF32, {num_rows, vocab}, kc::DeviceAllocator());
      std::vector<kc::RowCopy> copies;
      for (int64_t r = 0; r < num_rows; ++r) {
        copies.push_back({out.logits.data<float>() + rows[r] * vocab,
                          logits.data<float>() + r * vocab, vocab * 4});
      }
      V4RL_RETURN_IF_ERROR(kc::BatchCopy(copies));
    }
    const Tensor workspace =
        Tensor::Empty(DType::kU8, {kc::SampleTokensWorkspaceBytes(num_rows, vocab)},
                      kc::DeviceAllocator());
    std::vector<kernels::cpu::SampledToken> sampled(rows.size());
    V4RL_RETURN_IF_ERROR(kc::SampleTokens(logits.view(), params, workspace.view(),
                                          absl::MakeSpan(sampled)));
    for (int64_t r = 0; r < num_rows; ++r) {
      Sequence& seq = *stepping[rows[r]];
      if (AppendSampledToken(sampled[r], options, seq.result)) {
        seq.done = true;
        V4RL_RETURN_IF_ERROR(decoder->RemoveSequence(seq.handle));  // blocks back to the pool
      }
    }
  }
  return results;
}

}  // namespace v4rl::rollout
