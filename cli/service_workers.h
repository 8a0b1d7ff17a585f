// The workers `v4rl run` talks to when its services are not in process (run_config.proto
// ServicesConfig), as learner::WorkerSupervisor implementations:
//   SpawnedWorker    SPAWN: this binary's `v4rl serve rollout|reward` as a child process on
//                    127.0.0.1 with an ephemeral port (read from the child's first stdout line).
//                    Recover reaps a dead child, says how it ended, and starts a new one (a
//                    rollout worker on the latest published weights). The destructor stops it.
//   ConnectedWorker  CONNECT: a fixed address; Recover waits for it to answer gRPC health checks
//                    for up to a timeout, saying so on stderr.
// Thread-safety: one caller at a time (the job's thread).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/subprocess.h"
#include "learner/remote_service.h"

namespace v4rl::cli {

class SpawnedWorker final : public learner::WorkerSupervisor {
 public:
  // `service`: "rollout" or "reward"; `extra_args` go after `v4rl serve SERVICE`.
  SpawnedWorker(std::string service, std::vector<std::string> extra_args,
                double start_timeout_s = 120);
  ~SpawnedWorker() override;

  std::string address() const override { return address_; }
  std::string Describe() const override;
  absl::StatusOr<bool> Recover(const std::string& checkpoint_dir, int64_t version) override;

  // The running child (null before the first Recover); tests and messages use its pid.
  core::Subprocess* process() { return process_.get(); }
  int64_t starts() const { return starts_; }

 private:
  const std::string service_;
  const std::vector<std::string> extra_args_;
  const double start_timeout_s_;
  std::unique_ptr<core::Subprocess> process_;
  std::string address_;
  int64_t starts_ = 0;
};

class ConnectedWorker final : public learner::WorkerSupervisor {
 public:
  ConnectedWorker(std::string service, std::string address, double timeout_s);

  std::string address() const override { return address_; }
  std::string Describe() const override;
  absl::StatusOr<bool> Recover(const std::string& checkpoint_dir, int64_t version) override;

 private:
  const std::string service_;
  const std::string address_;
  const double timeout_s_;
};

// Whether `address` answers a gRPC health check with SERVING within `timeout_s`.
bool WaitForServing(const std::string& address, double timeout_s);

}  // namespace v4rl::cli
