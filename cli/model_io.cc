#include "cli/model_io.h"

#include <cstdlib>
#include <iostream>

namespace v4rl::cli {

int CommandError(const std::string& command, const std::string& message, int exit_code) {
  std::cerr << "v4rl " << command << ": " << message << "\n";
  return exit_code;
}

absl::Status ApplyThreadsFlag(int64_t threads) {
  if (threads < 0) {
    return absl::InvalidArgumentError("--threads must be >= 0, got " + std::to_string(threads));
  }
  // The process pool reads this once, on its first use.
  if (threads > 0) setenv("V4RL_NUM_THREADS", std::to_string(threads).c_str(), 1);
  return absl::OkStatus();
}

absl::StatusOr<core::Tensor> ReadNamedTensor(const core::SafetensorsFile& file,
                                             const std::string& name) {
  const core::SafetensorsEntry* entry = file.Find(name);
  if (entry == nullptr) {
    return absl::InvalidArgumentError(file.path() + " has no tensor '" + name + "'");
  }
  return file.Read(*entry);
}

}  // namespace v4rl::cli
