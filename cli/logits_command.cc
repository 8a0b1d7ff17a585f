// `v4rl logits`: runs the reference-precision (fp32, CPU) forward of a model directory on token
// ids from a safetensors file and writes the logits (and, on request, the routed expert ids, the
// final hidden state and MTP logits) to another safetensors file. --device cuda runs the
// production-precision GPU forward instead (model/forward_cuda.h; builds with CUDA only).
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/flags.h"
#include "cli/model_io.h"
#include "core/safetensors.h"
#include "model/forward.h"
#include "v4rl/build_config.h"
#if V4RL_WITH_CUDA
#include "model/forward_cuda.h"
#endif

namespace v4rl::cli {
namespace {

int RunLogits(const std::vector<std::string>& args) {
  FlagParser parser(
      "logits", "v4rl logits --model DIR --input IN.safetensors --output OUT.safetensors",
      "Run the fp32 CPU forward of a DeepSeek-V4 model directory (config.json + safetensors, "
      "transformers or DeepSeek naming, fp32/bf16/FP8/FP4 weights). IN holds int32 or int64 "
      "`input_ids` [B, T]; OUT gets fp32 `logits` [B, T, V], plus `routed_experts` int32 "
      "[layers, B, T, k] with --routing, `hidden` fp32 [B, T, H] with --hidden, and `mtp_logits` "
      "[B, T, V] with --mtp (IN must then also hold `next_ids` [B, T]: the token after each "
      "position). --device cuda runs the bf16 GPU forward (logits and --routing only).");
  std::string model_dir, input_path, output_path;
  int64_t threads = 0;
  bool routing = false, hidden = false, mtp = false, fp8_sim = false;
  std::string device = "cpu";
  parser.AddString("model", &model_dir, "model directory (or one .safetensors file's directory)");
  parser.AddString("input", &input_path, "safetensors file with input_ids [B, T]");
  parser.AddString("output", &output_path, "safetensors file to write");
  parser.AddInt("threads", &threads, "CPU threads (0: V4RL_NUM_THREADS or all cores)");
  parser.AddBool("routing", &routing, "also write the routed expert ids of every layer");
  parser.AddBool("hidden", &hidden, "also write the final hidden state (after the model norm)");
  parser.AddBool("mtp", &mtp, "also write the MTP block's logits for `next_ids`");
  parser.AddString("device", &device,
                   "cpu (fp32 reference) or cuda (bf16 weights and activations, fp32 "
                   "accumulation, on GPU 0)");
  parser.AddBool(
      "fp8-sim", &fp8_sim,
      "with --device cuda: the FP8/FP4 simulation of DeepSeek's official inference "
      "code (FP8 activations before the FP8/FP4 GEMMs, KV QAT, FP4 indexer; its kernels equal the "
      "CPU references bit for bit on the H200)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (model_dir.empty() || input_path.empty() || output_path.empty()) {
    std::cerr << "v4rl logits: --model, --input and --output are required\n" << parser.Help();
    return 2;
  }
  if (device != "cpu" && device != "cuda") {
    return CommandError("logits", "--device must be cpu or cuda, got " + device, 2);
  }
  if (fp8_sim && device != "cuda") {
    return CommandError("logits", "--fp8-sim needs --device cuda", 2);
  }
  if (device == "cuda" && (hidden || mtp)) {
    return CommandError("logits", "--device cuda writes logits and --routing only", 2);
  }
#if !V4RL_WITH_CUDA
  if (device == "cuda") {
    return CommandError("logits", "--device cuda: this v4rl was built without CUDA", 2);
  }
#endif
  if (absl::Status status = ApplyThreadsFlag(threads); !status.ok()) {
    return CommandError("logits", std::string(status.message()), 2);
  }

  absl::StatusOr<model::Model> loaded = model::Model::Load(model_dir);
  if (!loaded.ok()) return CommandError("logits", std::string(loaded.status().message()));
  const model::Model& model = *loaded;
  auto input = core::SafetensorsFile::Open(input_path);
  if (!input.ok()) return CommandError("logits", std::string(input.status().message()));
  absl::StatusOr<core::Tensor> ids = ReadNamedTensor(**input, "input_ids");
  if (!ids.ok()) return CommandError("logits", std::string(ids.status().message()));

  model::ForwardOptions options;
  options.return_routing = routing;
  options.return_hidden = hidden;
  options.return_streams = mtp;
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<model::ForwardOutput> out;
#if V4RL_WITH_CUDA
  if (device == "cuda") {
    // Upload once, then time the forward alone (as the CPU path times its forward).
    absl::StatusOr<std::unique_ptr<model::CudaModel>> gpu = model::CudaModel::Create(model);
    if (!gpu.ok()) return CommandError("logits", std::string(gpu.status().message()));
    model::CudaForwardOptions gpu_options;
    gpu_options.return_routing = routing;
    gpu_options.fp8_simulation = fp8_sim;
    start = std::chrono::steady_clock::now();
    absl::StatusOr<model::CudaForwardOutput> gpu_out = (*gpu)->Forward(ids->view(), gpu_options);
    if (!gpu_out.ok()) return CommandError("logits", std::string(gpu_out.status().message()));
    model::ForwardOutput converted;
    converted.logits = std::move(gpu_out->logits);
    converted.routed_experts = std::move(gpu_out->routed_experts);
    out = std::move(converted);
  }
#endif
  if (device == "cpu") out = model::Forward(model, ids->view(), options);
  if (!out.ok()) return CommandError("logits", std::string(out.status().message()));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::vector<core::NamedTensor> tensors = {{"logits", out->logits.view()}};
  core::Tensor routed;
  if (routing) {
    // Stack the per-layer [B, T, k] ids into [layers, B, T, k].
    const core::Shape one = out->routed_experts[0].view().shape_vector();
    core::Shape shape = {static_cast<int64_t>(out->routed_experts.size())};
    shape.insert(shape.end(), one.begin(), one.end());
    routed = core::Tensor::Empty(core::DType::kI32, shape);
    const int64_t per_layer = out->routed_experts[0].numel();
    for (size_t l = 0; l < out->routed_experts.size(); ++l) {
      std::copy(out->routed_experts[l].data<int32_t>(),
                out->routed_experts[l].data<int32_t>() + per_layer,
                routed.data<int32_t>() + l * per_layer);
    }
    tensors.push_back({"routed_experts", routed.view()});
  }
  if (hidden) tensors.push_back({"hidden", out->hidden.view()});
  core::Tensor mtp_logits;
  if (mtp) {
    absl::StatusOr<core::Tensor> next = ReadNamedTensor(**input, "next_ids");
    if (!next.ok()) return CommandError("logits", std::string(next.status().message()));
    absl::StatusOr<core::Tensor> logits =
        model::MtpForward(model, out->streams.view(), next->view());
    if (!logits.ok()) return CommandError("logits", std::string(logits.status().message()));
    mtp_logits = *std::move(logits);
    tensors.push_back({"mtp_logits", mtp_logits.view()});
  }
  const absl::Status written = core::WriteSafetensors(output_path, tensors);
  if (!written.ok()) return CommandError("logits", std::string(written.message()));
  const int64_t tokens = ids->numel();
  std::cerr << "v4rl logits (" << device << "): " << ids->size(0) << " x " << ids->size(1)
            << " tokens in " << seconds << " s (" << tokens / seconds << " tokens/s), wrote "
            << output_path << "\n";
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(logits, "Forward pass (fp32 CPU, or bf16 CUDA): token ids -> logits",
                      v4rl::cli::RunLogits);
