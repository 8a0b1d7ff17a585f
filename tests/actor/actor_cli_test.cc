// The JSON-lines CLIs (`v4rl tokenize`, `chat-encode`, `chat-parse`) run as a user would: one
// answer line per request line, an error line for a bad line, and processing goes on.

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "actor/py_json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/actor/actor_test_util.h"
#include "tests/testing/run_command.h"

namespace v4rl::actor {
namespace {

using ::testing::HasSubstr;

struct CliRun {
  int exit_code;
  std::vector<PyJson> lines;  // stdout, one JSON value per line
  std::string stderr_text;
};

CliRun RunV4rl(const std::string& arguments, const std::string& input) {
  const char* binary = std::getenv("V4RL_BINARY");
  EXPECT_NE(binary, nullptr) << "V4RL_BINARY is set by ctest";
  const std::string dir = ::testing::TempDir();
  std::ofstream(dir + "/actor_cli_input.jsonl", std::ios::binary) << input;
  const std::string command = std::string(binary) + " " + arguments + " < " + dir +
                              "/actor_cli_input.jsonl 2> " + dir + "/actor_cli_stderr.txt";
  const v4rl::testing::CommandResult result = v4rl::testing::RunCommand(command);
  CliRun run{result.exit_code, {}, ""};
  std::istringstream lines(result.output);
  for (std::string line; std::getline(lines, line);) {
    absl::StatusOr<PyJson> json = ParsePyJson(line, "output line");
    EXPECT_TRUE(json.ok()) << line;
    if (json.ok()) run.lines.push_back(*json);
  }
  std::ifstream err(dir + "/actor_cli_stderr.txt");
  run.stderr_text.assign(std::istreambuf_iterator<char>(err), {});
  return run;
}

std::string SyntheticTokenizerFile() {
  const std::string path = ::testing::TempDir() + "/actor_cli_tokenizer.json";
  std::ofstream(path, std::ios::binary) << testing::SyntheticTokenizerJson();
  return path;
}

TEST(ActorCli, TokenizeAndDecode) {
  const std::string tokenizer = SyntheticTokenizerFile();
  CliRun run =
      RunV4rl("tokenize --nov4_tokens --tokenizer " + tokenizer,
              "{\"text\": \"hello world\"}\n{bad\n\n{\"text\": 3}\n{\"text\": \"<ab>\"}\n");
  EXPECT_EQ(run.exit_code, 1);
  ASSERT_EQ(run.lines.size(), 4u);
  EXPECT_EQ(run.lines[0], PyJson::parse(R"({"ids": [259, 264]})"));
  EXPECT_THAT(run.lines[1]["error"].get<std::string>(), HasSubstr("line 2: malformed JSON"));
  EXPECT_THAT(run.lines[2]["error"].get<std::string>(), HasSubstr("line 4: expected {\"text\""));
  EXPECT_EQ(run.lines[3], PyJson::parse(R"({"ids": [1003]})"));

  run = RunV4rl("tokenize --nov4_tokens --decode --tokenizer " + tokenizer,
                "{\"ids\": [1001, 259, 264]}\n{\"ids\": [77777]}\n");
  ASSERT_EQ(run.lines.size(), 2u);
  EXPECT_EQ(run.lines[0]["text"], "<｜User｜>hello world");
  EXPECT_THAT(run.lines[1]["error"].get<std::string>(), HasSubstr("77777 is not a token id"));

  run = RunV4rl("tokenize --tokenizer /nonexistent.json", "");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.stderr_text, HasSubstr("/nonexistent.json"));
  EXPECT_EQ(RunV4rl("tokenize", "").exit_code, 2);
}

TEST(ActorCli, ChatEncodeReproducesTheFixtures) {
  std::string input;
  for (int i = 1; i <= 4; ++i) {
    absl::StatusOr<PyJson> fixture = ParsePyJson(
        testing::ReadTestData("dsv4_fixtures/test_input_" + std::to_string(i) + ".json"), "in");
    ASSERT_TRUE(fixture.ok());
    PyJson request = fixture->is_object() ? *fixture : PyJson{{"messages", *fixture}};
    request["thinking_mode"] = i == 4 ? "chat" : "thinking";
    input += PyJsonDumps(request) + "\n";
  }
  input +=
      "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"thinking_mode\": "
      "\"thinking\", \"reasoning_effort\": \"max\", \"drop_thinking\": false}\n";
  input += "[1, 2]\n{\"messages\": [], \"thinking_mode\": \"fast\"}\n";
  const CliRun run = RunV4rl("chat-encode", input);
  EXPECT_EQ(run.exit_code, 1);
  ASSERT_EQ(run.lines.size(), 7u);
  for (int i = 1; i <= 4; ++i) {
    EXPECT_EQ(run.lines[i - 1]["prompt"].get<std::string>(),
              testing::ReadTestData("dsv4_fixtures/test_output_" + std::to_string(i) + ".txt"));
  }
  EXPECT_THAT(run.lines[4]["prompt"].get<std::string>(), HasSubstr("Absolute maximum"));
  EXPECT_THAT(run.lines[5]["error"].get<std::string>(),
              HasSubstr("line 6: expected {\"messages\""));
  EXPECT_THAT(run.lines[6]["error"].get<std::string>(), HasSubstr("thinking_mode"));
}

TEST(ActorCli, ChatParse) {
  const std::string input =
      "{\"text\": \"r</think>ok<｜end▁of▁sentence｜>\", \"thinking_mode\": \"thinking\"}\n"
      "{\"text\": \"r</think>cut\", \"thinking_mode\": \"thinking\"}\n";
  CliRun run = RunV4rl("chat-parse", input);
  EXPECT_EQ(run.exit_code, 1);
  ASSERT_EQ(run.lines.size(), 2u);
  EXPECT_EQ(run.lines[0], PyJson::parse(R"({"role": "assistant", "content": "ok",
                                             "reasoning_content": "r", "tool_calls": []})"));
  EXPECT_THAT(run.lines[1]["error"].get<std::string>(), HasSubstr("missing"));

  run = RunV4rl("chat-parse --tolerant", input);
  EXPECT_EQ(run.exit_code, 0);
  ASSERT_EQ(run.lines.size(), 2u);
  EXPECT_EQ(run.lines[1]["content"], "cut");
  EXPECT_EQ(run.lines[1]["problems"].size(), 1u);
}

}  // namespace
}  // namespace v4rl::actor
