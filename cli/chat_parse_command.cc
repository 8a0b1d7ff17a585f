// `v4rl chat-parse`: JSON lines of completions on stdin -> assistant messages on stdout, as
// DeepSeek's parse_message_from_completion_text returns them (actor/chat_parse.h).
#include <iostream>

#include "actor/chat_parse.h"
#include "actor/message.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/json_lines.h"
#include "core/status.h"

namespace v4rl::cli {
namespace {

using actor::PyJson;

absl::StatusOr<PyJson> ParseLine(bool tolerant, const PyJson& request) {
  const PyJson* text = RequestField(request, "text");
  const PyJson* mode = RequestField(request, "thinking_mode");
  if (text == nullptr || !text->is_string()) {
    return absl::InvalidArgumentError("expected {\"text\": STRING, \"thinking_mode\": ...}");
  }
  if (mode == nullptr || (*mode != "chat" && *mode != "thinking")) {
    return absl::InvalidArgumentError("thinking_mode: expected \"chat\" or \"thinking\"");
  }
  const actor::ThinkingMode thinking_mode =
      *mode == "chat" ? actor::ThinkingMode::kChat : actor::ThinkingMode::kThinking;
  const std::string& completion = text->get_ref<const std::string&>();
  if (!tolerant) {
    V4RL_ASSIGN_OR_RETURN(const actor::Message message,
                          actor::ParseCompletion(completion, thinking_mode));
    return actor::AssistantMessageToJson(message);
  }
  actor::TolerantParse parsed = actor::ParseCompletionTolerant(completion, thinking_mode);
  PyJson answer = actor::AssistantMessageToJson(parsed.message);
  answer["problems"] = parsed.problems;
  return answer;
}

int RunChatParse(const std::vector<std::string>& args) {
  FlagParser parser(
      "chat-parse", "v4rl chat-parse [--tolerant] < completions.jsonl",
      "Parse DeepSeek-V4 completions (the text after the prompt, EOS included). Each input "
      "line: {\"text\": ..., \"thinking_mode\": \"chat\"|\"thinking\"}. Output: {\"role\": "
      "\"assistant\", \"content\", \"reasoning_content\", \"tool_calls\"} or {\"error\": ...}; "
      "with --tolerant, malformed output is repaired and \"problems\" lists what was dropped. "
      "The exit code is 1 if any line failed.");
  bool tolerant = false;
  parser.AddBool("tolerant", &tolerant, "recover what can be recovered instead of failing");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  return RunJsonLines(std::cin, std::cout,
                      [&](const PyJson& request) { return ParseLine(tolerant, request); });
}

}  // namespace
}  // namespace v4rl::cli

// V4RL_REGISTER_COMMAND needs an identifier; the name has a dash.
static ::v4rl::cli::CommandRegistrar chat_parse_registrar(
    "chat-parse", "Parse DeepSeek-V4 completions into messages", v4rl::cli::RunChatParse);
