// Runs the built `v4rl` binary: dispatch, --help on every subcommand, `inspect` on a generated
// checkpoint and on a malformed file (one error line, non-zero exit).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "core/safetensors.h"
#include "gtest/gtest.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/run_command.h"

namespace v4rl {
namespace {

using testing::RunV4rl;
using RunResult = testing::CommandResult;

TEST(Cli, TopLevelHelpListsSubcommands) {
  RunResult result = RunV4rl("--help");
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_NE(result.output.find("inspect"), std::string::npos);
  EXPECT_NE(result.output.find("version"), std::string::npos);
  EXPECT_EQ(RunV4rl("no-such-command").exit_code, 2);
  EXPECT_EQ(RunV4rl("").exit_code, 2);
}

TEST(Cli, EverySubcommandHasHelp) {
  RunResult list = RunV4rl("--help");
  // Each line "  NAME  summary" after "subcommands:" names one subcommand.
  size_t start = list.output.find("subcommands:\n");
  ASSERT_NE(start, std::string::npos);
  std::istringstream lines(list.output.substr(start + 13));
  std::string line;
  int checked = 0;
  while (std::getline(lines, line) && line.rfind("  ", 0) == 0) {
    const std::string name = line.substr(2, line.find(' ', 2) - 2);
    RunResult help = RunV4rl(name + " --help");
    EXPECT_EQ(help.exit_code, 0) << name;
    EXPECT_NE(help.output.find("usage: v4rl " + name), std::string::npos) << help.output;
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

TEST(Cli, VersionAndUsageErrors) {
  RunResult version = RunV4rl("version");
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.output.find("v4rl 0."), std::string::npos);
  RunResult bad_flag = RunV4rl("version --bogus");
  EXPECT_EQ(bad_flag.exit_code, 2);
  EXPECT_NE(bad_flag.output.find("unknown flag --bogus"), std::string::npos);
}

TEST(Cli, InspectListsTensorsAndTotals) {
  const std::string path = ::testing::TempDir() + "/cli_inspect.safetensors";
  core::Tensor a = testing::RandomNormal({4, 8}, 1);
  core::Tensor b = testing::RandomNormal({3}, 2);
  ASSERT_TRUE(core::WriteSafetensors(path, {{"layer.weight", a.view()}, {"norm", b.view()}}).ok());
  RunResult result = RunV4rl("inspect " + path);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("layer.weight"), std::string::npos);
  EXPECT_NE(result.output.find("[4, 8] 32"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("2 tensors in 1 file(s), 35 elements"), std::string::npos)
      << result.output;
}

TEST(Cli, InspectMalformedFilePrintsOneErrorLine) {
  const std::string path = ::testing::TempDir() + "/cli_bad.safetensors";
  const char bad[] = "\x10\0\0\0\0\0\0\0{not json at all";  // 16-byte header, not JSON
  std::ofstream(path, std::ios::binary).write(bad, sizeof(bad) - 1);
  RunResult result = RunV4rl("inspect " + path);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
  EXPECT_EQ(result.output.rfind("v4rl inspect: ", 0), 0u) << result.output;
  EXPECT_EQ(RunV4rl("inspect /nonexistent/path").exit_code, 1);
}

TEST(Cli, LogitsMatchesTheTransformersFixture) {
  // The fp32 forward of tests/data/model/mixed_small against transformers' logits.
  const std::string fixture = std::string(std::getenv("V4RL_SOURCE_DIR")) +
                              "/tests/data/model/mixed_small";
  const std::string out = ::testing::TempDir() + "/cli_logits.safetensors";
  RunResult result = RunV4rl("logits --model " + fixture + "/model --input " + fixture +
                             "/reference.safetensors --output " + out + " --routing --threads 2");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto ours = core::SafetensorsFile::Open(out);
  auto reference = core::SafetensorsFile::Open(fixture + "/reference.safetensors");
  ASSERT_TRUE(ours.ok() && reference.ok());
  const core::Tensor logits = (*ours)->Read(*(*ours)->Find("logits"));
  const core::Tensor expected = (*reference)->Read(*(*reference)->Find("logits"));
  ASSERT_EQ(logits.view().shape_vector(), expected.view().shape_vector());
  double max_error = 0;
  for (int64_t i = 0; i < logits.numel(); ++i) {
    max_error = std::max<double>(max_error,
                                 std::abs(logits.data<float>()[i] - expected.data<float>()[i]));
  }
  EXPECT_LT(max_error, 1e-4);
  ASSERT_NE((*ours)->Find("routed_experts"), nullptr);
  EXPECT_EQ((*ours)->Find("routed_experts")->shape, (core::Shape{3, 2, 40, 2}));
  // An input without input_ids: one error line, exit 1.
  RunResult missing = RunV4rl("logits --model " + fixture + "/model --input " + out +
                              " --output " + out + ".2");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("has no tensor 'input_ids'"), std::string::npos)
      << missing.output;
}

TEST(Cli, GradMatchesTheTransformersFixture) {
  // Loss and gradients of tests/data/model/mixed_small against transformers autograd, under the
  // checkpoint's transformers names; then with the routing `logits --routing` wrote replayed.
  const std::string fixture = std::string(std::getenv("V4RL_SOURCE_DIR")) +
                              "/tests/data/model/mixed_small";
  const std::string out = ::testing::TempDir() + "/cli_grad.safetensors";
  RunResult result = RunV4rl("grad --model " + fixture + "/model --input " + fixture +
                             "/reference.safetensors --output " + out + " --threads 2");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto ours = core::SafetensorsFile::Open(out);
  auto reference = core::SafetensorsFile::Open(fixture + "/reference.safetensors");
  auto grads = core::SafetensorsFile::Open(fixture + "/grads.safetensors");
  ASSERT_TRUE(ours.ok() && reference.ok() && grads.ok());
  const float loss = (*ours)->Read(*(*ours)->Find("loss")).data<float>()[0];
  const float expected_loss = (*reference)->Read(*(*reference)->Find("loss")).data<float>()[0];
  EXPECT_NEAR(loss, expected_loss, 1e-5 * expected_loss);
  for (const core::SafetensorsEntry& entry : (*grads)->entries()) {
    const core::SafetensorsEntry* mine = (*ours)->Find("grad." + entry.name);
    ASSERT_NE(mine, nullptr) << entry.name;
    const core::Tensor a = (*ours)->Read(*mine);
    const core::Tensor e = (*grads)->Read(entry);
    ASSERT_EQ(a.view().shape_vector(), e.view().shape_vector()) << entry.name;
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      diff += std::pow(a.data<float>()[i] - e.data<float>()[i], 2);
      norm += std::pow(e.data<float>()[i], 2);
    }
    EXPECT_LE(std::sqrt(diff / norm), 1e-4) << entry.name;
  }
  // Replaying the router's own choice (as `logits --routing` wrote it) gives the same loss.
  const std::string routing = ::testing::TempDir() + "/cli_grad_routing.safetensors";
  ASSERT_EQ(RunV4rl("logits --model " + fixture + "/model --input " + fixture +
                    "/reference.safetensors --output " + routing + " --routing")
                .exit_code,
            0);
  auto routed = core::SafetensorsFile::Open(routing);
  ASSERT_TRUE(routed.ok());
  const core::Tensor ids = (*reference)->Read(*(*reference)->Find("input_ids"));
  const core::Tensor experts = (*routed)->Read(*(*routed)->Find("routed_experts"));
  const std::string replay_in = ::testing::TempDir() + "/cli_grad_replay_in.safetensors";
  ASSERT_TRUE(core::WriteSafetensors(replay_in, {{"input_ids", ids.view()},
                                                 {"routed_experts", experts.view()}})
                  .ok());
  const std::string replay_out = ::testing::TempDir() + "/cli_grad_replay.safetensors";
  RunResult replayed = RunV4rl("grad --model " + fixture + "/model --input " + replay_in +
                               " --output " + replay_out + " --replay_routing --recompute");
  ASSERT_EQ(replayed.exit_code, 0) << replayed.output;
  auto replay_file = core::SafetensorsFile::Open(replay_out);
  ASSERT_TRUE(replay_file.ok());
  EXPECT_EQ((*replay_file)->Read(*(*replay_file)->Find("loss")).data<float>()[0], loss);
  // Without routed_experts in IN, --replay_routing is one error line.
  RunResult missing = RunV4rl("grad --model " + fixture + "/model --input " + fixture +
                              "/reference.safetensors --output " + out + " --replay_routing");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("has no tensor 'routed_experts'"), std::string::npos)
      << missing.output;
}

}  // namespace
}  // namespace v4rl
