// Running shell commands and the built `v4rl` binary from tests, capturing their output.
// Thread-safety: safe to call from several threads (each call has its own pipe).
#pragma once

#include <string>

namespace v4rl::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when the command did not exit normally
  std::string output;  // what the command wrote to stdout
};

// Runs `command` with /bin/sh; redirect stderr in the command ("2>&1") to capture it too.
CommandResult RunCommand(const std::string& command);

// Runs `$V4RL_BINARY arguments` (ctest sets V4RL_BINARY; without it, the `v4rl` beside the test
// executable, as in the device bundle), stdout and stderr merged.
CommandResult RunV4rl(const std::string& arguments);

}  // namespace v4rl::testing
