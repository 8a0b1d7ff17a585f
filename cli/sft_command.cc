// `v4rl sft --config FILE.textproto`: supervised fine-tuning (learner/sft_trainer.h), the loss and
// gradients on the CPU or, with --device cuda, on the GPU (learner/sft_step_cuda.h). The config
// is protos/sft_config.proto in text format; flags override a few fields for quick experiments.
#include <iostream>

#include "absl/strings/str_format.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/textproto_config.h"
#include "learner/sft_trainer.h"
#include "protos/sft_config.pb.h"
#include "v4rl/build_config.h"
#if V4RL_WITH_CUDA
#include "learner/sft_step_cuda.h"
#endif

namespace v4rl::cli {
namespace {

int RunSftCommand(const std::vector<std::string>& args) {
  FlagParser parser(
      "sft",
      "v4rl sft --config FILE.textproto [--run-dir DIR] [--steps N] [--device cpu|cuda] "
      "[--gemm f32|bf16] [--quiet]",
      "Supervised fine-tuning in fp32: completion-masked cross entropy, Muon + AdamW, warmup-"
      "cosine LR, held-out greedy exact match, metrics in RUN/metrics.jsonl, checkpoints in "
      "RUN/checkpoints (a rerun resumes from the latest one, bit-identically). The config schema "
      "is protos/sft_config.proto; configs/sft_addition.textproto is an example. --device cuda "
      "computes each step's forward, loss and backward on the GPU (fp32; the optimizer and the "
      "evaluation stay on the CPU; on the H200 100 steps follow the CPU run's losses within "
      "1e-5). --gemm bf16 (with --device cuda) runs its GEMMs on bf16 tensor cores: inputs "
      "rounded to bf16, fp32 accumulation, as a bf16 autocast Linear; everything else stays "
      "fp32.");
  std::string config_path, run_dir, device = "cpu", gemm = "f32";
  int64_t steps = 0;
  bool quiet = false;
  parser.AddString("config", &config_path, "SftConfig in protobuf text format (required)");
  parser.AddString("run-dir", &run_dir, "overrides run_dir");
  parser.AddInt("steps", &steps, "overrides steps");
  parser.AddBool("quiet", &quiet, "no progress lines");
  parser.AddString("device", &device, "where each step's loss and gradients run: cpu or cuda");
  parser.AddString("gemm", &gemm,
                   "GEMM arithmetic of --device cuda: f32 (exact) or bf16 (tensor cores)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (config_path.empty()) {
    std::cerr << "v4rl sft: --config is required (see v4rl sft --help)\n";
    return 2;
  }
  if (device != "cpu" && device != "cuda") {
    std::cerr << "v4rl sft: --device must be cpu or cuda, got " << device << "\n";
    return 2;
  }
  if (gemm != "f32" && gemm != "bf16") {
    std::cerr << "v4rl sft: --gemm must be f32 or bf16, got " << gemm << "\n";
    return 2;
  }
  if (gemm == "bf16" && device != "cuda") {
    std::cerr << "v4rl sft: --gemm bf16 needs --device cuda (the CPU computes in f32)\n";
    return 2;
  }
#if !V4RL_WITH_CUDA
  if (device == "cuda") {
    std::cerr << "v4rl sft: --device cuda: this v4rl was built without CUDA\n";
    return 2;
  }
#endif
  SftConfig config;
  if (absl::Status parsed = ParseTextprotoFile(config_path, &config); !parsed.ok()) {
    std::cerr << "v4rl sft: " << parsed.message() << "\n";
    return 1;
  }
  learner::SftOptions options = SftOptionsFromConfig(config);
  if (!run_dir.empty()) options.run_dir = run_dir;
  if (steps > 0) options.steps = steps;
  options.quiet = quiet;
#if V4RL_WITH_CUDA
  if (device == "cuda") {
    const kernels::cuda::GemmMath math =
        gemm == "bf16" ? kernels::cuda::GemmMath::kBf16Inputs : kernels::cuda::GemmMath::kExactF32;
    options.gradient_backend = [math](const model::Model& model) {
      return learner::MakeCudaSftGradientBackend(model, math);
    };
  }
#endif
  auto summary = learner::RunSft(options);
  if (!summary.ok()) {
    std::cerr << "v4rl sft: " << summary.status().message() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
      "sft: %d steps (resumed from %d), final loss %.4f, held-out exact match %.1f%%; run in %s\n",
      summary->steps, summary->resumed_from, summary->final_loss, 100 * summary->eval_exact_match,
      options.run_dir);
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(sft, "Supervised fine-tuning, CPU or GPU (textproto config)",
                      v4rl::cli::RunSftCommand);
