// The issue-10 acceptance run (label `slow`): `v4rl run` with the shipped
// configs/quickstart.textproto (SFT, then GRPO) must leave GRPO ahead of SFT on held-out prompts,
// greedy and sampled, and `v4rl store stats` must count every trajectory of the run. The measured
// accuracies and wall time are printed, not asserted beyond the margins.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/run_command.h"

namespace v4rl {
namespace {

TEST(QuickstartRun, GrpoBeatsSftAndEveryTrajectoryIsStored) {
  const std::string source = std::getenv("V4RL_SOURCE_DIR");
  const std::string run_dir = ::testing::TempDir() + "/quickstart_run";
  std::filesystem::remove_all(run_dir);
  std::filesystem::create_directories(run_dir);
  // The shipped config with only run_dir changed.
  std::ifstream shipped(source + "/configs/quickstart.textproto");
  std::stringstream text;
  text << shipped.rdbuf();
  std::string config = text.str();
  const size_t line = config.find("\nrun_dir: ");
  ASSERT_NE(line, std::string::npos) << "configs/quickstart.textproto has no run_dir line";
  config.replace(line + 1, config.find('\n', line + 1) - line - 1,
                 "run_dir: \"" + run_dir + "\"");
  const std::string config_path = run_dir + ".textproto";
  std::ofstream(config_path) << config;

  const auto start = std::chrono::steady_clock::now();
  // From the source directory: the config's paths are relative to it.
  const testing::CommandResult run = testing::RunCommand(
      "cd '" + source + "' && '" + std::getenv("V4RL_BINARY") + "' run '" + config_path + "' 2>&1");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(run.exit_code, 0) << run.output;
  auto summary = core::ReadJsonFile(run_dir + "/summary.json");
  ASSERT_TRUE(summary.ok()) << summary.status();
  const double greedy_sft = (*summary)["accuracy_after_sft"].get<double>();
  const double greedy_grpo = (*summary)["accuracy_after_grpo"].get<double>();
  const double sampled_sft = (*summary)["sampled_accuracy_after_sft"].get<double>();
  const double sampled_grpo = (*summary)["sampled_accuracy_after_grpo"].get<double>();
  std::printf("held-out greedy %.1f%% -> %.1f%%, sampled pass@1 %.1f%% -> %.1f%%, %.0f s\n",
              100 * greedy_sft, 100 * greedy_grpo, 100 * sampled_sft, 100 * sampled_grpo,
              seconds);
  EXPECT_GE(greedy_grpo, greedy_sft + 0.05);
  EXPECT_GE(sampled_grpo, sampled_sft + 0.08);

  const int64_t trajectories = (*summary)["trajectories"].get<int64_t>();
  const testing::CommandResult stats =
      testing::RunV4rl("store stats " + run_dir + "/trajectories");
  ASSERT_EQ(stats.exit_code, 0) << stats.output;
  EXPECT_THAT(stats.output,
              ::testing::HasSubstr("trajectories: " + std::to_string(trajectories)));
}

}  // namespace
}  // namespace v4rl
