// `v4rl sft` as a process: SIGKILL during training, rerun, and the loss curve continues
// bit-identically to an uninterrupted run; a malformed config is one clear error line; bad
// --gemm values are refused up front.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "core/json.h"
#include "gtest/gtest.h"
#include "tests/testing/run_command.h"

namespace v4rl {
namespace {

std::string Binary() { return std::getenv("V4RL_BINARY"); }

std::string WriteConfig(const std::string& name, const std::string& run_dir) {
  const std::string path = ::testing::TempDir() + "/" + name + ".textproto";
  std::ofstream(path) << "run_dir: \"" << run_dir << "\"\n"
                      << "init_config: \"" << std::getenv("V4RL_SOURCE_DIR")
                      << "/configs/models/tiny_char.json\"\n"
                      << "synthetic { name: \"reverse\" min_digits: 2 max_digits: 4 seed: 5 }\n"
                      << "steps: 16 batch_size: 4 lr: 2e-3 warmup_steps: 2\n"
                      << "eval_examples: 4 checkpoint_every: 2 keep_checkpoints: 3\n";
  return path;
}

pid_t Spawn(const std::string& config) {
  const pid_t pid = fork();
  if (pid == 0) {
    execl(Binary().c_str(), "v4rl", "sft", "--config", config.c_str(), "--quiet",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

// step -> every loss logged for it (a resumed run logs steps after its checkpoint again).
std::map<int64_t, std::vector<double>> Losses(const std::string& run_dir) {
  std::map<int64_t, std::vector<double>> losses;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto json = core::ParseJson(line, "metrics");
    if (json.ok() && json->contains("loss")) {
      losses[(*json)["step"].get<int64_t>()].push_back((*json)["loss"].get<double>());
    }
  }
  return losses;
}

TEST(SftCommand, SigkillThenResumeContinuesBitIdentically) {
  const std::string reference_dir = ::testing::TempDir() + "/sft_cli_reference";
  const std::string killed_dir = ::testing::TempDir() + "/sft_cli_killed";
  std::filesystem::remove_all(reference_dir);
  std::filesystem::remove_all(killed_dir);
  const pid_t reference = Spawn(WriteConfig("sft_reference", reference_dir));
  ASSERT_EQ(Wait(reference), 0);

  const std::string config = WriteConfig("sft_killed", killed_dir);
  const pid_t victim = Spawn(config);
  // Kill once the first checkpoint exists, mid-way through later steps.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (!std::filesystem::exists(killed_dir + "/checkpoints/latest") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(victim, SIGKILL);
  const int killed_status = Wait(victim);
  ASSERT_TRUE(WIFSIGNALED(killed_status)) << "the run finished before it could be killed";
  ASSERT_EQ(Wait(Spawn(config)), 0);

  const auto expected = Losses(reference_dir);
  const auto actual = Losses(killed_dir);
  ASSERT_EQ(expected.size(), 16u);
  ASSERT_EQ(actual.size(), 16u);
  for (const auto& [step, values] : actual) {
    for (double loss : values) EXPECT_EQ(loss, expected.at(step)[0]) << "step " << step;
  }
}

TEST(SftCommand, MalformedConfigIsOneErrorLine) {
  const std::string path = ::testing::TempDir() + "/bad_sft.textproto";
  std::ofstream(path) << "steps: \"many\"\n";
  const testing::CommandResult result = testing::RunV4rl("sft --config " + path);
  const std::string& output = result.output;
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(output.find("line 1"), std::string::npos) << output;
  EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << output;
}

TEST(SftCommand, GemmFlagIsCheckedBeforeAnyWork) {
  const std::string config = WriteConfig("gemm_flag", ::testing::TempDir() + "/sft_gemm_flag");
  const testing::CommandResult unknown =
      testing::RunV4rl("sft --config " + config + " --device cuda --gemm fp16");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.output.find("--gemm must be f32 or bf16, got fp16"), std::string::npos)
      << unknown.output;
  const testing::CommandResult on_cpu = testing::RunV4rl("sft --config " + config + " --gemm bf16");
  EXPECT_EQ(on_cpu.exit_code, 2);
  EXPECT_NE(on_cpu.output.find("--gemm bf16 needs --device cuda"), std::string::npos)
      << on_cpu.output;
}

}  // namespace
}  // namespace v4rl
