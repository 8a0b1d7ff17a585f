// `v4rl generate`: greedy or sampled continuations of a batch of prompts under a model directory
// (rollout::Generate, fp32 on the CPU), read from and written to safetensors files.
//
// IN: int32/int64 `input_ids` [B, T], right-padded; optional int32/int64 `lengths` [B] (each in
// [1, T]) giving each row's prompt length (default: all T; ids past a row's length are ignored).
// OUT (N = --max-new-tokens; a row stops early at a stop token, which is kept):
//   tokens            int32 [B, N]  generated ids, kPadToken (-1) after the row's end
//   logprobs          fp32  [B, N]  log softmax of the raw model logits at each token, 0 on pads
//   sampling_logprobs fp32  [B, N]  log prob under the sampling distribution (temperature, top-k,
//                                   top-p renormalised; 0 when greedy), 0 on pads
//   kept_counts       int32 [B, N]  size of the kept top-k/top-p set (1 when greedy), 0 on pads
//   lengths           int32 [B]     generated tokens per row
//   routed_experts    int32 [B, P, L, k]  experts of every fed position (prompt + tokens but the
//                                   last), P = max over rows of prompt length + length - 1, -1 pads
// Row b samples with seed S + b, so a row's tokens depend only on its prompt and that seed.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/model_io.h"
#include "v4rl/build_config.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "rollout/generate.h"
#if V4RL_WITH_CUDA
#include "model/forward_cuda.h"
#include "rollout/generate_cuda.h"
#endif

namespace v4rl::cli {
namespace {

using core::DType;
using core::Tensor;

constexpr int32_t kPadToken = -1;

int Fail(const std::string& message) { return CommandError("generate", message); }
int UsageError(const std::string& message) { return CommandError("generate", message, 2); }

// Element i of a CPU int32/int64 tensor.
int64_t IntAt(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kI64 ? t.data<int64_t>()[i] : t.data<int32_t>()[i];
}

// The prompts of IN: `input_ids` rows cut to `lengths`.
absl::StatusOr<std::vector<rollout::GenerationRequest>> ReadPrompts(const std::string& path,
                                                                    uint64_t seed) {
  V4RL_ASSIGN_OR_RETURN(std::unique_ptr<core::SafetensorsFile> file,
                        core::SafetensorsFile::Open(path));
  const core::SafetensorsEntry* ids_entry = file->Find("input_ids");
  if (ids_entry == nullptr) {
    return absl::InvalidArgumentError(path + " has no tensor 'input_ids'");
  }
  const Tensor ids = file->Read(*ids_entry);
  if (ids.rank() != 2 || (ids.dtype() != DType::kI32 && ids.dtype() != DType::kI64) ||
      ids.size(0) == 0 || ids.size(1) == 0) {
    return absl::InvalidArgumentError("input_ids must be a non-empty int32/int64 [B, T] tensor, "
                                      "got " + ids.view().DebugString());
  }
  const int64_t batch = ids.size(0), width = ids.size(1);
  std::vector<int64_t> lengths(batch, width);
  if (const core::SafetensorsEntry* entry = file->Find("lengths")) {
    const Tensor read = file->Read(*entry);
    if (read.rank() != 1 || read.size(0) != batch ||
        (read.dtype() != DType::kI32 && read.dtype() != DType::kI64)) {
      return absl::InvalidArgumentError("lengths must be an int32/int64 [" +
                                        std::to_string(batch) + "] tensor, got " +
                                        read.view().DebugString());
    }
    for (int64_t b = 0; b < batch; ++b) {
      lengths[b] = IntAt(read, b);
      if (lengths[b] < 1 || lengths[b] > width) {
        return absl::InvalidArgumentError("lengths[" + std::to_string(b) + "] = " +
                                          std::to_string(lengths[b]) + " is outside [1, " +
                                          std::to_string(width) + "]");
      }
    }
  }
  std::vector<rollout::GenerationRequest> requests(batch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < lengths[b]; ++t) {
      const int64_t id = IntAt(ids, b * width + t);
      if (id < INT32_MIN || id > INT32_MAX) {
        return absl::InvalidArgumentError("input_ids[" + std::to_string(b) + ", " +
                                          std::to_string(t) + "] = " + std::to_string(id) +
                                          " is not a token id");
      }
      requests[b].prompt.push_back(static_cast<int32_t>(id));
    }
    requests[b].seed = seed + static_cast<uint64_t>(b);
  }
  return requests;
}

// "1,2,3" -> {1, 2, 3}; empty text -> {}.
absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text) {
  std::vector<int32_t> tokens;
  if (text.empty()) return tokens;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t token;
    if (!absl::SimpleAtoi(part, &token)) {
      return absl::InvalidArgumentError("--stop-tokens must be comma-separated token ids, got \"" +
                                        text + "\"");
    }
    tokens.push_back(token);
  }
  return tokens;
}

absl::Status WriteResults(const std::string& path, const model::ModelConfig& config,
                          const std::vector<rollout::GenerationResult>& results,
                          int64_t max_new_tokens) {
  const int64_t batch = static_cast<int64_t>(results.size()), n = max_new_tokens;
  const int64_t layers = config.num_layers, k = config.num_experts_per_tok;
  int64_t positions = 0;
  for (int64_t b = 0; b < batch; ++b) {
    positions = std::max<int64_t>(positions, results[b].routed_experts.size() / (layers * k));
  }
  Tensor tokens = Tensor::Empty(DType::kI32, {batch, n});
  Tensor logprobs = Tensor::Zeros(DType::kF32, {batch, n});
  Tensor sampling_logprobs = Tensor::Zeros(DType::kF32, {batch, n});
  Tensor kept_counts = Tensor::Zeros(DType::kI32, {batch, n});
  Tensor lengths = Tensor::Empty(DType::kI32, {batch});
  Tensor routed = Tensor::Empty(DType::kI32, {batch, positions, layers, k});
  std::fill(tokens.data<int32_t>(), tokens.data<int32_t>() + tokens.numel(), kPadToken);
  std::fill(routed.data<int32_t>(), routed.data<int32_t>() + routed.numel(), -1);
  for (int64_t b = 0; b < batch; ++b) {
    const rollout::GenerationResult& r = results[b];
    const int64_t count = static_cast<int64_t>(r.tokens.size());
    std::copy(r.tokens.begin(), r.tokens.end(), tokens.data<int32_t>() + b * n);
    std::copy(r.model_logprobs.begin(), r.model_logprobs.end(), logprobs.data<float>() + b * n);
    std::copy(r.sampling_logprobs.begin(), r.sampling_logprobs.end(),
              sampling_logprobs.data<float>() + b * n);
    std::copy(r.kept_counts.begin(), r.kept_counts.end(), kept_counts.data<int32_t>() + b * n);
    lengths.data<int32_t>()[b] = static_cast<int32_t>(count);
    std::copy(r.routed_experts.begin(), r.routed_experts.end(),
              routed.data<int32_t>() + b * positions * layers * k);
  }
  return core::WriteSafetensors(path, {{"tokens", tokens.view()},
                                       {"logprobs", logprobs.view()},
                                       {"sampling_logprobs", sampling_logprobs.view()},
                                       {"kept_counts", kept_counts.view()},
                                       {"lengths", lengths.view()},
                                       {"routed_experts", routed.view()}});
}

int RunGenerate(const std::vector<std::string>& args) {
  FlagParser parser(
      "generate",
      "v4rl generate --model DIR --input IN.safetensors --max-new-tokens N [--greedy | "
      "--temperature T --top-p P --top-k K --seed S] [--stop-tokens A,B] [--device cuda] --output "
      "OUT.safetensors",
      "Continue each prompt of IN under a DeepSeek-V4 model directory (fp32, CPU), greedily or by "
      "sampling, with incremental decoding. IN: int32/int64 `input_ids` [B, T], right-padded, and "
      "optional int32/int64 `lengths` [B] (prompt length of each row, default T). OUT: int32 "
      "`tokens` [B, N] (-1 after a row's end), fp32 `logprobs` [B, N] (raw model log softmax; 0 on "
      "pads), fp32 `sampling_logprobs` [B, N], int32 `kept_counts` [B, N] (top-k/top-p set size), "
      "int32 `lengths` [B] (generated tokens per row; a stop token ends a row and is kept) and "
      "int32 `routed_experts` [B, P, layers, k] (experts of every fed position, -1 pads). Row b "
      "samples with seed S + b. --device cuda decodes on the GPU in bf16 (model/decode_cuda.h) with "
      "the same flags, seeds and outputs; tokens may differ from the CPU's at near-tied logits.");
  std::string model_dir, input_path, output_path, stop_text, device = "cpu";
  int64_t max_new_tokens = 0, top_k = 0, seed = 0, prefill_chunk = 0, threads = 0;
  double temperature = 1.0, top_p = 1.0;
  bool greedy = false, fp8_sim = false, no_cuda_graphs = false;
  parser.AddString("model", &model_dir, "model directory (config.json + safetensors)");
  parser.AddString("input", &input_path, "safetensors file with input_ids [B, T] (+ lengths [B])");
  parser.AddString("output", &output_path, "safetensors file to write");
  parser.AddInt("max-new-tokens", &max_new_tokens, "most tokens generated per row (>= 1)");
  parser.AddBool("greedy", &greedy, "take the argmax (excludes the sampling flags)");
  parser.AddDouble("temperature", &temperature, "sampling temperature (> 0)");
  parser.AddDouble("top-p", &top_p, "nucleus mass kept after top-k, in (0, 1]");
  parser.AddInt("top-k", &top_k, "most probable tokens kept (0: all)");
  parser.AddInt("seed", &seed, "row b samples with seed S + b (>= 0)");
  parser.AddString("stop-tokens", &stop_text, "comma-separated ids that end a row (kept)");
  parser.AddInt("prefill-chunk", &prefill_chunk,
                "prompt tokens fed per step (0: whole prompt; same results)");
  parser.AddInt("threads", &threads, "CPU threads (0: V4RL_NUM_THREADS or all cores)");
  parser.AddString("device", &device,
                   "cpu (fp32 reference) or cuda (bf16 weights and activations on the GPU)");
  parser.AddBool(
      "fp8-sim", &fp8_sim,
      "with --device cuda: the FP8/FP4 simulation of DeepSeek's official inference "
      "code (FP8 activations before the FP8/FP4 GEMMs, KV QAT, FP4 indexer; its kernels equal the "
      "CPU references bit for bit on the H200)");
  parser.AddBool("no-cuda-graphs", &no_cuda_graphs,
                 "with --device cuda: launch every decode step's kernels one by one instead of "
                 "replaying recorded CUDA graphs (same results; for diagnosis)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (model_dir.empty() || input_path.empty() || output_path.empty() ||
      !parser.WasSet("max-new-tokens")) {
    return UsageError("--model, --input, --output and --max-new-tokens are required");
  }
  if (greedy && (parser.WasSet("temperature") || parser.WasSet("top-p") ||
                 parser.WasSet("top-k") || parser.WasSet("seed"))) {
    return UsageError("--greedy excludes --temperature, --top-p, --top-k and --seed");
  }
  if (seed < 0) return UsageError("--seed must be >= 0, got " + std::to_string(seed));
  if (device != "cpu" && device != "cuda") {
    return UsageError("--device must be cpu or cuda, got " + device);
  }
  if (fp8_sim && device != "cuda") return UsageError("--fp8-sim needs --device cuda");
  if (no_cuda_graphs && device != "cuda") {
    return UsageError("--no-cuda-graphs needs --device cuda");
  }
#if !V4RL_WITH_CUDA
  if (device == "cuda") return UsageError("--device cuda: this v4rl was built without CUDA");
#endif
  if (absl::Status status = ApplyThreadsFlag(threads); !status.ok()) {
    return UsageError(std::string(status.message()));
  }
  if (top_k < 0 || top_k > INT32_MAX) {
    return UsageError("--top-k must be in [0, 2^31), got " + std::to_string(top_k));
  }
  absl::StatusOr<std::vector<int32_t>> stop_tokens = ParseTokenList(stop_text);
  if (!stop_tokens.ok()) return UsageError(std::string(stop_tokens.status().message()));

  rollout::GenerateOptions options;
  options.max_new_tokens = max_new_tokens;
  options.sampling = {.greedy = greedy,
                      .temperature = static_cast<float>(temperature),
                      .top_p = static_cast<float>(top_p),
                      .top_k = static_cast<int32_t>(top_k)};
  options.stop_tokens = *std::move(stop_tokens);
  options.prefill_chunk = prefill_chunk;

  absl::StatusOr<model::Model> model = model::Model::Load(model_dir);
  if (!model.ok()) return Fail(std::string(model.status().message()));
  const absl::Status valid = options.Validate(model->config);
  if (!valid.ok()) return UsageError(std::string(valid.message()));
  absl::StatusOr<std::vector<rollout::GenerationRequest>> requests =
      ReadPrompts(input_path, static_cast<uint64_t>(seed));
  if (!requests.ok()) return Fail(std::string(requests.status().message()));
  absl::StatusOr<std::vector<rollout::GenerationResult>> results;
#if V4RL_WITH_CUDA
  if (device == "cuda") {
    absl::StatusOr<std::unique_ptr<model::CudaModel>> gpu = model::CudaModel::Create(*model);
    if (!gpu.ok()) return Fail(std::string(gpu.status().message()));
    results = rollout::GenerateCuda(*model, gpu->get(), *requests, options,
                                    {.fp8_simulation = fp8_sim, .cuda_graphs = !no_cuda_graphs});
  }
#endif
  if (device == "cpu") results = rollout::Generate(*model, *requests, options);
  if (!results.ok()) return Fail(std::string(results.status().message()));
  const absl::Status written =
      WriteResults(output_path, model->config, *results, max_new_tokens);
  if (!written.ok()) return Fail(std::string(written.message()));
  int64_t generated = 0;
  for (const rollout::GenerationResult& r : *results) generated += r.tokens.size();
  std::cerr << "v4rl generate: " << generated << " tokens for " << results->size()
            << " prompts, wrote " << output_path << "\n";
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(generate, "Greedy or sampled continuations of prompts (incremental decoding)",
                      v4rl::cli::RunGenerate);
