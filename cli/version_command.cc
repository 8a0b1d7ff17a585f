// `v4rl version`: prints the version and which optional parts this binary was built with.
#include <iostream>

#include "cli/command.h"
#include "cli/flags.h"
#include "v4rl/build_config.h"

namespace v4rl::cli {
namespace {

int RunVersion(const std::vector<std::string>& args) {
  FlagParser parser("version", "v4rl version", "Print the version and the build's options.");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  std::cout << "v4rl " << V4RL_VERSION << " (cuda " << (V4RL_WITH_CUDA ? "on" : "off")
            << ", nccl " << (V4RL_WITH_NCCL ? "on" : "off") << ", grpc "
            << (V4RL_WITH_GRPC ? "on" : "off") << ", rocksdb " << (V4RL_WITH_ROCKSDB ? "on" : "off")
            << ")\n";
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(version, "Print the version and build options", v4rl::cli::RunVersion);
