#include "tests/testing/run_command.h"

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>

#include "gtest/gtest.h"

namespace v4rl::testing {

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    result.output = "popen failed";
    return result;
  }
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

CommandResult RunV4rl(const std::string& arguments) {
  const char* binary = std::getenv("V4RL_BINARY");
  EXPECT_NE(binary, nullptr) << "V4RL_BINARY is set by ctest";
  return RunCommand(std::string(binary ? binary : "v4rl") + " " + arguments + " 2>&1");
}

}  // namespace v4rl::testing
