// The issue-6 acceptance run (label `slow`): `v4rl sft` with the shipped
// configs/sft_addition.textproto trains a tiny V4 model from scratch to >= 95% greedy exact
// match on held-out addition prompts. The wall time is printed, not asserted.
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "core/json.h"
#include "gtest/gtest.h"

namespace v4rl {
namespace {

TEST(SftAccuracy, ShippedAdditionConfigReaches95Percent) {
  const std::string source = std::getenv("V4RL_SOURCE_DIR");
  const std::string run_dir = ::testing::TempDir() + "/sft_accuracy";
  std::filesystem::remove_all(run_dir);
  const std::string command = std::string(std::getenv("V4RL_BINARY")) + " sft --config " + source +
                              "/configs/sft_addition.textproto --run-dir " + run_dir;
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(("cd " + source + " && " + command).c_str());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(WEXITSTATUS(status), 0);
  auto summary = core::ReadJsonFile(run_dir + "/summary.json");
  ASSERT_TRUE(summary.ok()) << summary.status();
  const double accuracy = (*summary)["eval_exact_match"].get<double>();
  std::printf("held-out exact match %.1f%% after %.0f s\n", 100 * accuracy, seconds);
  EXPECT_GE(accuracy, 0.95);
}

}  // namespace
}  // namespace v4rl
