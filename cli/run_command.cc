// `v4rl run CONFIG.textproto`: a post-training job (learner/grpo_job.h): SFT a model on a
// synthetic task, then GRPO on it, every sample written to a RocksDB trajectory store in the run
// directory. Rollout and reward run in this process, in worker processes this command starts
// (services SPAWN), or in workers already running (CONNECT). The config is
// protos/run_config.proto in text format.
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/textproto_config.h"
#include "cli/service_workers.h"
#include "learner/grpo_job.h"
#include "learner/learner_inbox.h"
#include "learner/learner_service.h"
#include "learner/remote_service.h"
#include "protos/run_config.pb.h"
#include "protos/server_service.h"
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
  const ServicesConfig& services = config.services();
  if (services.mode() == ServicesConfig::MODE_CONNECT &&
      (services.rollout_address().empty() || services.reward_address().empty())) {
    problems.push_back(
        "services.mode is CONNECT but services.rollout_address or services.reward_address is "
        "empty");
  }
  if (services.mode() != ServicesConfig::MODE_CONNECT &&
      (!services.rollout_address().empty() || !services.reward_address().empty())) {
    problems.push_back("services.rollout_address / reward_address need services.mode CONNECT");
  }
  if (services.mode() == ServicesConfig::MODE_IN_PROCESS &&
      services.weight_transfer() != ServicesConfig::WEIGHT_TRANSFER_DEFAULT) {
    problems.push_back("services.weight_transfer needs services.mode SPAWN or CONNECT");
  }
  if (services.connect_timeout_s() < 0) {
    problems.push_back(absl::StrFormat("services.connect_timeout_s must be >= 0 (got %g)",
                                       services.connect_timeout_s()));
  }
  if (services.max_attempts() < 0) {
    problems.push_back(absl::StrFormat("services.max_attempts must be >= 1 (got %d)",
                                       services.max_attempts()));
  }
  if (services.learner_port() < 0 || services.learner_port() > 65535) {
    problems.push_back(absl::StrFormat("services.learner_port must be in [0, 65535] (got %d)",
                                       services.learner_port()));
  }
  if (services.worker_threads() < 0) {
    problems.push_back(absl::StrFormat("services.worker_threads must be >= 0 (got %d)",
                                       services.worker_threads()));
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
  o.warmup_steps = grpo.warmup_steps();
  o.normalize_std = grpo.normalize_std();
  if (grpo.eval_samples() == -1) {
    o.eval_samples = 0;
  } else if (grpo.eval_samples() != 0) {
    o.eval_samples = grpo.eval_samples();
  }
  o.max_policy_lag = config.services().max_policy_lag();
  return o;
}

int RunRunCommand(const std::vector<std::string>& args) {
  FlagParser parser(
      "run", "v4rl run CONFIG.textproto [--quiet]",
      "Runs a post-training job: SFT of a tiny model on a synthetic task, then "
      "GRPO on the same task (group-relative advantages, clipped ratio, keep-routing, keep-"
      "sampling-mask, optional KL to the SFT model). The config schema is "
      "protos/run_config.proto; configs/quickstart.textproto is an example. The run directory "
      "holds RUN/sft (the SFT run: metrics.jsonl, checkpoints, summary.json; resumed if present), "
      "RUN/trajectories (RocksDB store of every GRPO sample with its reward, group and weight "
      "version; `v4rl store stats RUN/trajectories`), RUN/metrics_grpo.jsonl (one line per GRPO "
      "step and one for the final evaluation), RUN/checkpoints (the GRPO policy, a model "
      "directory) and RUN/summary.json (held-out accuracy after SFT and after GRPO, greedy and "
      "sampled pass@1 over grpo.eval_samples samples per prompt, mean reward per step). A run "
      "directory that already has trajectories is refused.\n\n"
      "Services (the config's `services` section): mode IN_PROCESS (default) runs rollout and "
      "reward here; SPAWN starts `v4rl serve rollout` and `v4rl serve reward` as child processes "
      "on 127.0.0.1 with ephemeral ports, restarts a worker that dies and retries its call, and "
      "stops them at the end; CONNECT uses workers already running at services.rollout_address "
      "and services.reward_address and waits up to services.connect_timeout_s for one that stops "
      "answering. With SPAWN or CONNECT the learner publishes every new weight version to the "
      "rollout worker: it writes RUN/published/version-N and then, per "
      "services.weight_transfer, passes the path (PATH, the default with SPAWN: the worker reads "
      "this host's files) or streams the weights in the call (STREAM, the default with CONNECT: "
      "a worker on another host; chunks of 1 MiB, re-sent after a worker restart). It also "
      "serves the Learner service on 127.0.0.1 (SubmitTrajectories, WaitForWeightVersion); each "
      "sample's weight version and lag are recorded (metrics, store header policy_version) and "
      "services.max_policy_lag bounds the lag. The results are bit-identical in every mode for "
      "a fixed seed.");
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
  // Services: the backends, the workers behind them and the Learner service.
  const ServicesConfig& services = config.services();
  learner::GrpoJobBackends backends;
  std::unique_ptr<learner::WorkerSupervisor> rollout_worker, reward_worker;
  std::unique_ptr<learner::RemoteRollout> remote_rollout;
  std::unique_ptr<learner::RemoteReward> remote_reward;
  learner::WeightVersionBoard board;
  learner::TrajectoryInbox inbox;
  std::unique_ptr<learner::LearnerServiceImpl> learner_service;
  protos::RunningServer learner_server;
  if (services.mode() != ServicesConfig::MODE_IN_PROCESS) {
    if (!services.token().empty()) setenv("V4RL_SERVICE_TOKEN", services.token().c_str(), 1);
    const double timeout_s = services.connect_timeout_s() > 0 ? services.connect_timeout_s() : 60;
    if (services.mode() == ServicesConfig::MODE_SPAWN) {
      std::vector<std::string> common;
      if (services.worker_threads() > 0) {
        common = {"--threads", absl::StrFormat("%d", services.worker_threads())};
      }
      std::vector<std::string> rollout_args = common;
      rollout_args.insert(rollout_args.end(),
                          {"--max_new_tokens_non_think",
                           absl::StrFormat("%d", options->max_new_tokens), "--batch_window_us",
                           "0"});
      rollout_worker = std::make_unique<SpawnedWorker>("rollout", rollout_args);
      reward_worker = std::make_unique<SpawnedWorker>("reward", common);
    } else {
      rollout_worker =
          std::make_unique<ConnectedWorker>("rollout", services.rollout_address(), timeout_s);
      reward_worker =
          std::make_unique<ConnectedWorker>("reward", services.reward_address(), timeout_s);
    }
    learner::RemoteOptions remote;
    remote.token = services.token();
    const bool stream = services.weight_transfer() == ServicesConfig::WEIGHT_TRANSFER_STREAM ||
                        (services.weight_transfer() == ServicesConfig::WEIGHT_TRANSFER_DEFAULT &&
                         services.mode() == ServicesConfig::MODE_CONNECT);
    remote.weight_transfer =
        stream ? learner::WeightTransfer::kStream : learner::WeightTransfer::kPath;
    if (services.max_attempts() > 0) remote.max_attempts = services.max_attempts();
    remote_rollout = std::make_unique<learner::RemoteRollout>(
        rollout_worker.get(), options->run_dir + "/published", remote);
    remote_reward = std::make_unique<learner::RemoteReward>(reward_worker.get(), remote);
    backends.rollout = remote_rollout.get();
    backends.reward = remote_reward.get();
    learner_service = std::make_unique<learner::LearnerServiceImpl>(store->get(), &board, &inbox,
                                                                    services.token());
    absl::StatusOr<protos::RunningServer> running = protos::StartServer(
        {learner_service.get()}, absl::StrFormat("127.0.0.1:%d", services.learner_port()));
    if (!running.ok()) {
      std::cerr << "v4rl run: learner service: " << running.status().message() << "\n";
      return 1;
    }
    learner_server = *std::move(running);
    std::cerr << "v4rl run: learner service on " << learner_server.address() << "\n";
    backends.on_weights_published = [&board](int64_t version) { board.Publish(version); };
  }
  absl::StatusOr<learner::GrpoJobSummary> summary =
      learner::RunGrpoJob(*options, store->get(), backends);
  if (learner_server.server != nullptr) learner_server.server->Shutdown();
  if (!summary.ok()) {
    std::cerr << "v4rl run: " << summary.status().message() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
      "run: held-out exact match %.1f%% after SFT, %.1f%% after %d GRPO steps (greedy)",
      100 * summary->accuracy_after_sft, 100 * summary->accuracy_after_grpo, summary->steps);
  if (options->eval_samples > 0) {
    std::cout << absl::StrFormat("; sampled pass@1 %.1f%% -> %.1f%% (%d samples per prompt)",
                                 100 * summary->sampled_accuracy_after_sft,
                                 100 * summary->sampled_accuracy_after_grpo,
                                 options->eval_samples);
  }
  std::cout << absl::StrFormat("; %d trajectories; run in %s\n", summary->trajectories,
                               options->run_dir);
  if (remote_rollout != nullptr &&
      (remote_rollout->recoveries() > 0 || remote_reward->recoveries() > 0)) {
    std::cerr << absl::StrFormat(
        "v4rl run: rollout worker recovered %d time(s), reward worker %d time(s)\n",
        remote_rollout->recoveries(), remote_reward->recoveries());
  }
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(run,
                      "SFT then GRPO on a synthetic task (textproto config); rollout and reward "
                      "in process or in worker processes over gRPC",
                      v4rl::cli::RunRunCommand);
