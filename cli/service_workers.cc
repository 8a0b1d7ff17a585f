#include "cli/service_workers.h"

#include <unistd.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "grpcpp/grpcpp.h"
#include "protos/health.grpc.pb.h"

namespace v4rl::cli {
namespace {

// This executable, so workers run the same build as the job.
std::string SelfPath() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : "v4rl";
}

}  // namespace

bool WaitForServing(const std::string& address, double timeout_s) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (std::chrono::system_clock::now() < deadline) {
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(std::min(deadline, std::chrono::system_clock::now() +
                                                std::chrono::seconds(1)));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    if (stub->Check(&context, request, &response).ok() &&
        response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

SpawnedWorker::SpawnedWorker(std::string service, std::vector<std::string> extra_args,
                             double start_timeout_s)
    : service_(std::move(service)),
      extra_args_(std::move(extra_args)),
      start_timeout_s_(start_timeout_s) {}

SpawnedWorker::~SpawnedWorker() {
  if (process_ != nullptr) process_->Stop();
}

std::string SpawnedWorker::Describe() const {
  if (process_ == nullptr) return absl::StrFormat("%s worker (not started)", service_);
  return absl::StrFormat("%s worker pid %d at %s", service_, process_->pid(), address_);
}

absl::StatusOr<bool> SpawnedWorker::Recover(const std::string& checkpoint_dir, int64_t version) {
  if (process_ != nullptr) {
    // A failed call means this child is unusable: make sure it is gone, and say how it ended.
    const std::string described = Describe();
    const std::string how = process_->Running() ? "was stopped (" + process_->Stop() + ")"
                                                : process_->Stop();
    std::cerr << absl::StrFormat("v4rl run: %s %s; starting a new %s worker\n", described, how,
                                 service_);
  }
  std::vector<std::string> argv = {SelfPath(), "serve", service_, "--port", "0"};
  if (service_ == "rollout") {
    argv.insert(argv.end(),
                {"--model", checkpoint_dir, "--version", absl::StrFormat("%d", version)});
  }
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  absl::StatusOr<std::unique_ptr<core::Subprocess>> process = core::Subprocess::Start(argv);
  if (!process.ok()) return process.status();
  process_ = *std::move(process);
  ++starts_;
  absl::StatusOr<std::string> line = process_->ReadLine(start_timeout_s_);
  int port = 0;
  if (!line.ok() || !absl::SimpleAtoi(*line, &port) || port <= 0 || port > 65535) {
    const std::string why = line.ok() ? absl::StrFormat("printed \"%s\", not a port", *line)
                                      : std::string(line.status().message());
    process_->Stop();
    return absl::UnavailableError(
        absl::StrFormat("%s worker (pid %d) did not start: %s", service_, process_->pid(), why));
  }
  address_ = absl::StrFormat("127.0.0.1:%d", port);
  std::cerr << absl::StrFormat("v4rl run: started %s%s\n", Describe(),
                               service_ == "rollout"
                                   ? absl::StrFormat(" on weights version %d", version)
                                   : "");
  return true;
}

ConnectedWorker::ConnectedWorker(std::string service, std::string address, double timeout_s)
    : service_(std::move(service)), address_(std::move(address)), timeout_s_(timeout_s) {}

std::string ConnectedWorker::Describe() const {
  return absl::StrFormat("%s worker at %s", service_, address_);
}

absl::StatusOr<bool> ConnectedWorker::Recover(const std::string&, int64_t) {
  std::cerr << absl::StrFormat("v4rl run: waiting up to %.0f s for the %s to serve\n", timeout_s_,
                               Describe());
  if (!WaitForServing(address_, timeout_s_)) {
    return absl::UnavailableError(absl::StrFormat(
        "%s did not answer health checks within %.0f s; start it (v4rl serve %s) or raise "
        "services.connect_timeout_s",
        Describe(), timeout_s_, service_));
  }
  return false;  // its weight version is unknown: the caller re-publishes
}

}  // namespace v4rl::cli
