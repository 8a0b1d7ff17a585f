// `v4rl serve rollout|reward|learner`: one v4rl service in its own process, on 127.0.0.1.
// The process prints the port it listens on, alone on one line, to stdout (so a parent that asked
// for port 0 reads it), logs to stderr, and serves until SIGTERM or SIGINT, then shuts down.
// `v4rl run` with services { mode: SPAWN } starts the rollout and reward workers this way.
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/model_io.h"
#include "learner/learner_inbox.h"
#include "learner/learner_service.h"
#include "model/forward.h"
#include "protos/server_service.h"
#include "reward/reward_service.h"
#include "rollout/rollout_service.h"
#include "store/rocksdb_trajectory_store.h"

namespace v4rl::cli {
namespace {

constexpr const char* kTokenEnv = "V4RL_SERVICE_TOKEN";

// Common flags of every service.
struct ServeFlags {
  int64_t port = 0;
  std::string host = "127.0.0.1";
  std::string token;
};

void AddServeFlags(FlagParser& parser, ServeFlags* flags) {
  parser.AddInt("port", &flags->port, "TCP port; 0 picks a free one (printed on stdout)");
  parser.AddString("host", &flags->host,
                   "address to bind; keep 127.0.0.1 unless a --token guards the service");
  parser.AddString("token", &flags->token,
                   "shared secret clients must send ('authorization: Bearer TOKEN'); default: "
                   "$V4RL_SERVICE_TOKEN, else none");
}

// Starts `services`, prints the port, serves until SIGTERM/SIGINT.
int Serve(const std::string& what, const std::vector<grpc::Service*>& services,
          const ServeFlags& flags) {
  if (flags.port < 0 || flags.port > 65535) {
    std::cerr << "v4rl serve " << what << ": --port " << flags.port << " outside [0, 65535]\n";
    return 2;
  }
  // Blocked before gRPC starts its threads, so every thread inherits the mask and sigwait below
  // is the only receiver.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  absl::StatusOr<protos::RunningServer> running =
      protos::StartServer(services, absl::StrFormat("%s:%d", flags.host, flags.port));
  if (!running.ok()) {
    std::cerr << "v4rl serve " << what << ": " << running.status().message() << "\n";
    return 1;
  }
  std::cout << running->port << std::endl;
  std::cerr << absl::StrFormat("v4rl serve %s: pid %d listening on %s:%d%s\n", what, getpid(),
                               flags.host, running->port,
                               flags.token.empty() ? "" : " (token required)");
  int signal = 0;
  sigwait(&stop_signals, &signal);
  std::cerr << absl::StrFormat("v4rl serve %s: %s, shutting down\n", what, strsignal(signal));
  running->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}

int ServeRollout(const std::vector<std::string>& args) {
  FlagParser parser(
      "serve rollout", "v4rl serve rollout --model DIR [--version N] [--port P] [flags]",
      "Serves the Rollout service (protos/rollout_service.proto): streamed Generate with tokens, "
      "logprobs, kept-set sizes, routed experts and the weight version; UpdateWeights from a "
      "model directory on this host, or StreamWeights with the weights in the call (a header "
      "with the version, config.json and tensor directory, then chunks of at most 4 MiB - 64 KiB; "
      "the config must equal the served model's, and any error leaves the served version "
      "unchanged) for a learner on another host; gRPC health. Prompts are token ids; each may "
      "carry its own seed.");
  ServeFlags flags;
  std::string model_dir;
  int64_t version = 0, threads = 0, batch_window_us = 2000, prefill_chunk = 0;
  int64_t non_think = 256, think_high = 1024, think_max = 4096;
  AddServeFlags(parser, &flags);
  parser.AddString("model", &model_dir, "model directory served first (required)");
  parser.AddInt("version", &version,
                "weight version of --model; UpdateWeights / StreamWeights must exceed it");
  parser.AddInt("max_new_tokens_non_think", &non_think, "length budget of NON_THINK requests");
  parser.AddInt("max_new_tokens_think_high", &think_high, "length budget of THINK_HIGH requests");
  parser.AddInt("max_new_tokens_think_max", &think_max, "length budget of THINK_MAX requests");
  parser.AddInt("batch_window_us", &batch_window_us,
                "how long a call waits for others to batch with");
  parser.AddInt("prefill_chunk", &prefill_chunk, "prompt tokens per step (0: whole prompt)");
  parser.AddInt("threads", &threads, "CPU threads (0: V4RL_NUM_THREADS or all cores)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (model_dir.empty()) {
    std::cerr << "v4rl serve rollout: --model is required\n";
    return 2;
  }
  if (flags.token.empty() && std::getenv(kTokenEnv) != nullptr) flags.token = std::getenv(kTokenEnv);
  if (absl::Status status = ApplyThreadsFlag(threads); !status.ok()) {
    std::cerr << "v4rl serve rollout: " << status.message() << "\n";
    return 2;
  }
  absl::StatusOr<model::Model> model = model::Model::Load(model_dir);
  if (!model.ok()) {
    std::cerr << "v4rl serve rollout: " << model_dir << ": " << model.status().message() << "\n";
    return 1;
  }
  rollout::RolloutServiceOptions options;
  options.max_new_tokens_non_think = non_think;
  options.max_new_tokens_think_high = think_high;
  options.max_new_tokens_think_max = think_max;
  options.batch_window_us = batch_window_us;
  options.prefill_chunk = prefill_chunk;
  options.token = flags.token;
  absl::StatusOr<std::unique_ptr<rollout::RolloutServiceImpl>> service =
      rollout::RolloutServiceImpl::Create(*std::move(model), version, options);
  if (!service.ok()) {
    std::cerr << "v4rl serve rollout: " << service.status().message() << "\n";
    return 2;
  }
  return Serve("rollout", {service->get()}, flags);
}

int ServeReward(const std::vector<std::string>& args) {
  FlagParser parser("serve reward", "v4rl serve reward [--port P] [--token T]",
                    "Serves the Reward service (protos/reward_service.proto): rule verifiers "
                    "(exact, integer or verbatim answers; format checks per reasoning mode); "
                    "gRPC health.");
  ServeFlags flags;
  AddServeFlags(parser, &flags);
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (flags.token.empty() && std::getenv(kTokenEnv) != nullptr) flags.token = std::getenv(kTokenEnv);
  reward::RewardServiceImpl service(flags.token);
  return Serve("reward", {&service}, flags);
}

int ServeLearner(const std::vector<std::string>& args) {
  FlagParser parser(
      "serve learner", "v4rl serve learner --store DIR [--version N] [--port P] [--token T]",
      "Serves the Learner service (protos/learner_service.proto) over a RocksDB trajectory "
      "store: SubmitTrajectories (ids already in the store, or whole trajectories, validated "
      "and written) and WaitForWeightVersion. Standalone, the published version stays at "
      "--version; `v4rl run` with services SPAWN or CONNECT serves it next to the job, which "
      "publishes a version after every step.");
  ServeFlags flags;
  std::string store_dir;
  int64_t version = -1;
  AddServeFlags(parser, &flags);
  parser.AddString("store", &store_dir, "RocksDB trajectory store directory (required)");
  parser.AddInt("version", &version, "published weight version (-1: none)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (store_dir.empty()) {
    std::cerr << "v4rl serve learner: --store is required\n";
    return 2;
  }
  if (flags.token.empty() && std::getenv(kTokenEnv) != nullptr) flags.token = std::getenv(kTokenEnv);
  absl::StatusOr<std::unique_ptr<store::RocksDbTrajectoryStore>> store =
      store::RocksDbTrajectoryStore::Open(store_dir, store::RocksDbStoreOptions{});
  if (!store.ok()) {
    std::cerr << "v4rl serve learner: " << store.status().message() << "\n";
    return 1;
  }
  learner::WeightVersionBoard board;
  if (version >= 0) board.Publish(version);
  learner::TrajectoryInbox inbox;
  learner::LearnerServiceImpl service(store->get(), &board, &inbox, flags.token);
  return Serve("learner", {&service}, flags);
}

int RunServe(const std::vector<std::string>& args) {
  const std::string usage =
      "usage: v4rl serve rollout|reward|learner [--port P] [--token T] [flags]\n\n"
      "Starts one v4rl gRPC service on 127.0.0.1 (gRPC health included). The port it listens on\n"
      "is printed alone on the first stdout line (--port 0, the default, picks a free one);\n"
      "SIGTERM or SIGINT stops it. `v4rl serve SERVICE --help` lists each service's flags.\n"
      "  rollout  --model DIR [--version N]: Generate / UpdateWeights / StreamWeights\n"
      "  reward   rule verifiers: Score\n"
      "  learner  --store DIR: SubmitTrajectories / WaitForWeightVersion\n"
      "`v4rl run` starts the rollout and reward workers itself with services { mode: SPAWN }.\n";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    (args.empty() ? std::cerr : std::cout) << usage;
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "rollout") return ServeRollout(rest);
  if (args[0] == "reward") return ServeReward(rest);
  if (args[0] == "learner") return ServeLearner(rest);
  std::cerr << "v4rl serve: unknown service \"" << args[0] << "\"\n\n" << usage;
  return 2;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(serve, "Serve rollout, reward or learner over gRPC on 127.0.0.1",
                      v4rl::cli::RunServe);
