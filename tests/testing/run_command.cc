#include "tests/testing/run_command.h"

#include <sys/wait.h>
#include <unistd.h>

#include <climits>
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

namespace {

// $V4RL_BINARY, else the `v4rl` beside the running test (the device bundle's bin/ layout), else
// empty.
std::string V4rlBinary() {
  if (const char* binary = std::getenv("V4RL_BINARY")) return binary;
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "";
  std::string beside(self, n);
  beside = beside.substr(0, beside.rfind('/')) + "/v4rl";
  return access(beside.c_str(), X_OK) == 0 ? beside : "";
}

}  // namespace

CommandResult RunV4rl(const std::string& arguments) {
  const std::string binary = V4rlBinary();
  EXPECT_FALSE(binary.empty()) << "V4RL_BINARY is set by ctest (or a v4rl beside the test)";
  return RunCommand((binary.empty() ? std::string("v4rl") : binary) + " " + arguments + " 2>&1");
}

}  // namespace v4rl::testing
