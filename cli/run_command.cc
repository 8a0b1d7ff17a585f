// `v4rl run CONFIG.textproto`: a post-training job in one process (learner/grpo_job.h): SFT a model
// on a synthetic task, then GRPO on it, every sample written to a RocksDB trajectory store in the
// run directory. The config is protos/run_config.proto in text format.
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/textproto_config.h"
#include "learner/grpo_job.h"
#include "protos/run_config.pb.h"
#include "store/rocksdb_trajectory_store.h"

namespace v4rl::cli {
namespace {

// The job's options; InvalidArgument listing the fields that must stay unset.
absl::StatusOr<learner::GrpoJobOptions> ToOptions(const RunConfig& config) {
  std::vector<std::string> problems;
  if (!config.sft().run_dir().empty()) {
    problems.push_back(absl::StrFormat("sft.run_dir is \"%s\"; leave it unset (SFT runs in RUN/sft)",
                                       config.sft().run_dir()));
  }
  if (config.sft().has_synthetic()) {
    problems.push_back("sft.synthetic is set; the task is the top-level `synthetic`");
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError("run config: " + absl::StrJoin(problems, "; "));
  }
  SftConfig sft = config.sft();
  *sft.mutable_synthetic() = config.synthetic();
  learner::GrpoJobOptions o;
  o.run_dir = config.run_dir();
  o.sft = SftOptionsFromConfig(sft);
  const GrpoConfig& grpo = config.grpo();
  if (grpo.steps()) o.steps = grpo.steps();
  if (grpo.prompts_per_step()) o.prompts_per_step = grpo.prompts_per_step();
  if (grpo.group_size()) o.group_size = grpo.group_size();
  if (grpo.temperature()) o.temperature = static_cast<float>(grpo.temperature());
  o.top_k = grpo.top_k();
  if (grpo.lr()) o.lr = grpo.lr();
  o.kl_coef = grpo.kl_coef();
  if (grpo.clip()) o.clip = grpo.clip();
  if (grpo.has_grad_clip()) o.grad_clip = grpo.grad_clip();
  if (grpo.max_new_tokens()) o.max_new_tokens = grpo.max_new_tokens();
  if (grpo.eval_examples()) o.eval_examples = grpo.eval_examples();
  if (grpo.seed()) o.seed = grpo.seed();
  return o;
}

int RunRunCommand(const std::vector<std::string>& args) {
  FlagParser parser(
      "run", "v4rl run CONFIG.textproto [--quiet]",
      "Runs a post-training job in this process: SFT of a tiny model on a synthetic task, then "
      "GRPO on the same task (group-relative advantages, clipped ratio, keep-routing, keep-"
      "sampling-mask, optional KL to the SFT model). The config schema is "
      "protos/run_config.proto; configs/quickstart.textproto is an example. The run directory "
      "holds RUN/sft (the SFT run: metrics.jsonl, checkpoints, summary.json; resumed if present), "
      "RUN/trajectories (RocksDB store of every GRPO sample with its reward, group and weight "
      "version; `v4rl store stats RUN/trajectories`), RUN/metrics_grpo.jsonl (one line per GRPO "
      "step and one for the final evaluation), RUN/checkpoints (the GRPO policy, a model "
      "directory) and RUN/summary.json (held-out accuracy after SFT and after GRPO, mean reward "
      "per step). A run directory that already has trajectories is refused.");
  std::string config_path;
  bool quiet = false;
  parser.AddPositional("CONFIG.textproto", &config_path, "RunConfig in protobuf text format");
  parser.AddBool("quiet", &quiet, "no progress lines");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  RunConfig config;
  if (absl::Status parsed = ParseTextprotoFile(config_path, &config); !parsed.ok()) {
    std::cerr << "v4rl run: " << parsed.message() << "\n";
    return 1;
  }
  absl::StatusOr<learner::GrpoJobOptions> options = ToOptions(config);
  if (options.ok()) options->quiet = quiet;
  absl::Status valid = options.ok() ? options->Validate() : options.status();
  if (!valid.ok()) {
    std::cerr << "v4rl run: " << config_path << ": " << valid.message() << "\n";
    return 1;
  }
  const std::string store_dir = options->run_dir + "/trajectories";
  if (std::filesystem::exists(store_dir)) {
    std::cerr << "v4rl run: " << store_dir
              << " already exists; choose a new run_dir or remove the old run\n";
    return 1;
  }
  std::filesystem::create_directories(options->run_dir);
  absl::StatusOr<std::unique_ptr<store::RocksDbTrajectoryStore>> store =
      store::RocksDbTrajectoryStore::Open(store_dir, store::RocksDbStoreOptions{});
  if (!store.ok()) {
    std::cerr << "v4rl run: " << store.status().message() << "\n";
    return 1;
  }
  absl::StatusOr<learner::GrpoJobSummary> summary = learner::RunGrpoJob(*options, store->get());
  if (!summary.ok()) {
    std::cerr << "v4rl run: " << summary.status().message() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
      "run: held-out exact match %.1f%% after SFT, %.1f%% after %d GRPO steps; %d trajectories; "
      "run in %s\n",
      100 * summary->accuracy_after_sft, 100 * summary->accuracy_after_grpo, summary->steps,
      summary->trajectories, options->run_dir);
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(run, "SFT then GRPO on a synthetic task, in one process (textproto config)",
                      v4rl::cli::RunRunCommand);
