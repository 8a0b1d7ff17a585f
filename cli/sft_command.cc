// `v4rl sft --config FILE.textproto`: supervised fine-tuning on the CPU (learner/sft_trainer.h).
// The config is protos/sft_config.proto in text format; flags override a few fields for quick
// experiments.
#include <iostream>

#include "absl/strings/str_format.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "core/file.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "learner/sft_trainer.h"
#include "protos/sft_config.pb.h"

namespace v4rl::cli {
namespace {

// Collects every text-format error with its line and column.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    errors += absl::StrFormat("%sline %d column %d: %s", errors.empty() ? "" : "; ", line + 1,
                              column + 1, message);
  }
  std::string errors;
};

learner::SftOptions ToOptions(const SftConfig& config) {
  learner::SftOptions o;
  o.run_dir = config.run_dir();
  o.model_dir = config.model_dir();
  o.init_config = config.init_config();
  o.init_seed = config.init_seed() ? config.init_seed() : 1;
  o.dataset = config.dataset();
  const SyntheticTaskConfig& task = config.synthetic();
  if (!task.name().empty()) o.synthetic.name = task.name();
  if (task.min_digits()) o.synthetic.min_digits = task.min_digits();
  if (task.max_digits()) o.synthetic.max_digits = task.max_digits();
  if (task.seed()) o.synthetic.seed = task.seed();
  if (config.steps()) o.steps = config.steps();
  if (config.batch_size()) o.batch_size = config.batch_size();
  o.schedule.peak_lr = config.lr() ? config.lr() : 1e-3;
  o.schedule.end_lr = config.end_lr() ? config.end_lr() : o.schedule.peak_lr / 10;
  o.schedule.warmup_steps = config.warmup_steps();
  if (config.has_grad_clip()) o.grad_clip = config.grad_clip();
  if (config.has_weight_decay()) {
    o.muon.weight_decay = static_cast<float>(config.weight_decay());
    o.adamw.weight_decay = static_cast<float>(config.weight_decay());
  }
  o.recompute = config.recompute();
  o.eval_every = config.eval_every();
  if (config.eval_examples()) o.eval_examples = config.eval_examples();
  o.checkpoint_every = config.checkpoint_every();
  if (config.keep_checkpoints()) o.keep_checkpoints = config.keep_checkpoints();
  return o;
}

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
  auto text = core::ReadFile(config_path, 1 << 20);
  if (!text.ok()) {
    std::cerr << "v4rl sft: " << text.status().message() << "\n";
    return 1;
  }
  SftConfig config;
  google::protobuf::TextFormat::Parser text_parser;
  ErrorCollector errors;
  text_parser.RecordErrorsTo(&errors);
  if (!text_parser.ParseFromString(*text, &config)) {
    std::cerr << "v4rl sft: " << config_path << ": " << errors.errors << "\n";
    return 1;
  }
  learner::SftOptions options = ToOptions(config);
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
