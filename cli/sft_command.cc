// `v4rl sft --config FILE.textproto`: supervised fine-tuning on the CPU (learner/sft_trainer.h).
// The config is protos/sft_config.proto in text format; flags override a few fields for quick
// experiments.
#include <iostream>

#include "absl/strings/str_format.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/textproto_config.h"
#include "learner/sft_trainer.h"
#include "protos/sft_config.pb.h"

namespace v4rl::cli {
namespace {

int RunSftCommand(const std::vector<std::string>& args) {
  FlagParser parser(
      "sft", "v4rl sft --config FILE.textproto [--run-dir DIR] [--steps N] [--quiet]",
      "Supervised fine-tuning on the CPU: completion-masked cross entropy, Muon + AdamW, warmup-"
      "cosine LR, held-out greedy exact match, metrics in RUN/metrics.jsonl, checkpoints in "
      "RUN/checkpoints (a rerun resumes from the latest one, bit-identically). The config schema "
      "is protos/sft_config.proto; configs/sft_addition.textproto is an example.");
  std::string config_path, run_dir;
  int64_t steps = 0;
  bool quiet = false;
  parser.AddString("config", &config_path, "SftConfig in protobuf text format (required)");
  parser.AddString("run-dir", &run_dir, "overrides run_dir");
  parser.AddInt("steps", &steps, "overrides steps");
  parser.AddBool("quiet", &quiet, "no progress lines");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (config_path.empty()) {
    std::cerr << "v4rl sft: --config is required (see v4rl sft --help)\n";
    return 2;
  }
  SftConfig config;
  if (absl::Status parsed = ParseTextprotoFile(config_path, &config); !parsed.ok()) {
    std::cerr << "v4rl sft: " << parsed.message() << "\n";
    return 1;
  }
  learner::SftOptions options = SftOptionsFromConfig(config);
  if (!run_dir.empty()) options.run_dir = run_dir;
  if (steps > 0) options.steps = steps;
  options.quiet = quiet;
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

V4RL_REGISTER_COMMAND(sft, "Supervised fine-tuning on the CPU (textproto config)",
                      v4rl::cli::RunSftCommand);
