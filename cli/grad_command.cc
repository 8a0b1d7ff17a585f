// `v4rl grad`: the mean next-token cross entropy of token ids under a model directory (as
// transformers computes it with labels = input_ids) and its gradient w.r.t. every trainable
// parameter, in fp32 on the CPU, written to a safetensors file under the checkpoint's own names.
// --device cuda runs forward, loss and backward on the GPU (model/backward_cuda.h, fp32 reference
// precision); builds with CUDA only.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/flags.h"
#include "cli/model_io.h"
#include "core/safetensors.h"
#include "model/checkpoint_gradients.h"
#include "model/next_token_loss.h"
#include "v4rl/build_config.h"
#if V4RL_WITH_CUDA
#include "model/backward_cuda.h"
#endif

namespace v4rl::cli {
namespace {

int RunGrad(const std::vector<std::string>& args) {
  FlagParser parser(
      "grad", "v4rl grad --model DIR --input IN.safetensors --output OUT.safetensors",
      "Compute the mean next-token cross entropy of int32/int64 `input_ids` [B, T] (T >= 2) in IN "
      "under a DeepSeek-V4 model directory, as transformers does with labels = input_ids "
      "(logits[:, :-1] predict ids[:, 1:], mean over B·(T-1) positions), and its gradient in fp32 "
      "on the CPU. OUT gets fp32 `loss` [1] and `grad.<name>` for every trainable parameter, "
      "named and shaped as in the checkpoint (transformers names and merged experts, or DeepSeek "
      "names and per-expert tensors; FP8/FP4 weights get the gradient of their dequantised "
      "values). Not trained: gate.bias / e_score_correction_bias, tid2eid; the lightning "
      "indexer's gradients are zero (no gradient flows through its top-k). --device cuda runs the "
      "forward, the loss and the backward on the GPU in fp32 (no --recompute; on the H200 the "
      "gradients match the CPU's within 1e-5 relative by norm).");
  std::string model_dir, input_path, output_path;
  int64_t threads = 0;
  bool recompute = false, replay_routing = false;
  std::string device = "cpu";
  parser.AddString("model", &model_dir, "model directory (config.json + safetensors)");
  parser.AddString("input", &input_path, "safetensors file with input_ids [B, T]");
  parser.AddString("output", &output_path, "safetensors file to write");
  parser.AddInt("threads", &threads, "CPU threads (0: V4RL_NUM_THREADS or all cores)");
  parser.AddBool("recompute", &recompute,
                 "keep only block inputs and recompute each block in the backward pass");
  parser.AddBool("replay_routing", &replay_routing,
                 "route with IN's int32 `routed_experts` [layers, B, T, k] (as `v4rl logits "
                 "--routing` writes) instead of the router's choice");
  parser.AddString("device", &device,
                   "cpu (fp32 reference) or cuda (forward, loss and backward on the GPU in fp32)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (device != "cpu" && device != "cuda") {
    return CommandError("grad", "--device must be cpu or cuda, got " + device, 2);
  }
#if !V4RL_WITH_CUDA
  if (device == "cuda") {
    return CommandError("grad", "--device cuda: this v4rl was built without CUDA", 2);
  }
#endif
  if (device == "cuda" && recompute) {
    return CommandError("grad", "--device cuda does not support --recompute yet", 2);
  }
  if (model_dir.empty() || input_path.empty() || output_path.empty()) {
    std::cerr << "v4rl grad: --model, --input and --output are required\n" << parser.Help();
    return 2;
  }
  if (absl::Status status = ApplyThreadsFlag(threads); !status.ok()) {
    return CommandError("grad", std::string(status.message()), 2);
  }

  absl::StatusOr<model::Model> loaded = model::Model::Load(model_dir);
  if (!loaded.ok()) return CommandError("grad", std::string(loaded.status().message()));
  const model::Model& model = *loaded;
  auto input = core::SafetensorsFile::Open(input_path);
  if (!input.ok()) return CommandError("grad", std::string(input.status().message()));
  absl::StatusOr<core::Tensor> ids = ReadNamedTensor(**input, "input_ids");
  if (!ids.ok()) return CommandError("grad", std::string(ids.status().message()));

  model::NextTokenLossOptions options;
  options.backward.recompute = recompute;
  core::Tensor routed;
  if (replay_routing) {
    absl::StatusOr<core::Tensor> read = ReadNamedTensor(**input, "routed_experts");
    if (!read.ok()) return CommandError("grad", std::string(read.status().message()));
    routed = *std::move(read);
    if (routed.rank() != 4 || routed.size(0) != model.config.num_layers) {
      return CommandError("grad", "routed_experts must be [layers = " + std::to_string(model.config.num_layers) +
                  ", B, T, k], got " + routed.view().DebugString());
    }
    // Forward checks each layer's shape, dtype and expert ids.
    for (int64_t l = 0; l < routed.size(0); ++l) {
      options.routing_replay.push_back(routed.view().Select(0, l));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<model::NextTokenLossResult> result;
#if V4RL_WITH_CUDA
  if (device == "cuda") {
    absl::StatusOr<std::unique_ptr<model::CudaBackward>> gpu = model::CudaBackward::Create(model);
    if (!gpu.ok()) return CommandError("grad", std::string(gpu.status().message()));
    result = model::CudaNextTokenLossAndGradients(**gpu, model, ids->view(), options);
  }
#endif
  if (device == "cpu") result = model::NextTokenLossAndGradients(model, ids->view(), options);
  if (!result.ok()) return CommandError("grad", std::string(result.status().message()));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  auto directory = core::TensorDirectory::Open(model_dir);
  if (!directory.ok()) return CommandError("grad", std::string(directory.status().message()));
  absl::StatusOr<std::vector<model::NamedGradient>> named =
      model::CheckpointGradients(model.config, result->grads, **directory);
  if (!named.ok()) return CommandError("grad", std::string(named.status().message()));
  const core::Tensor loss = core::Tensor::FromFloats({1}, {static_cast<float>(result->loss)});
  std::vector<core::NamedTensor> tensors = {{"loss", loss.view()}};
  for (const model::NamedGradient& g : *named)
    tensors.push_back({"grad." + g.key, g.tensor.view()});
  const absl::Status written = core::WriteSafetensors(output_path, tensors);
  if (!written.ok()) return CommandError("grad", std::string(written.message()));
  std::cerr << "v4rl grad (" << device << "): loss " << result->loss << " over " << ids->size(0) << " x "
            << ids->size(1) << " tokens, " << named->size() << " gradients in " << seconds
            << " s, wrote " << output_path << "\n";
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(grad, "Next-token loss and fp32 CPU gradients of every trainable parameter",
                      v4rl::cli::RunGrad);
