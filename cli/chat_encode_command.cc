// `v4rl chat-encode`: JSON lines of chat requests on stdin -> DeepSeek-V4 prompts on stdout
// (actor/chat_encoding.h), optionally with their token ids.
#include <iostream>

#include "absl/strings/str_format.h"
#include "actor/chat_encoding.h"
#include "actor/deepseek_v4_tokens.h"
#include "actor/message.h"
#include "actor/tokenizer.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/json_lines.h"
#include "core/status.h"

namespace v4rl::cli {
namespace {

using actor::PyJson;

absl::StatusOr<actor::EncodeOptions> ParseOptions(const PyJson& request) {
  actor::EncodeOptions options;
  const PyJson* mode = RequestField(request, "thinking_mode");
  if (mode == nullptr || (*mode != "chat" && *mode != "thinking")) {
    return absl::InvalidArgumentError("thinking_mode: expected \"chat\" or \"thinking\"");
  }
  options.thinking_mode =
      *mode == "chat" ? actor::ThinkingMode::kChat : actor::ThinkingMode::kThinking;
  const PyJson* effort = RequestField(request, "reasoning_effort");
  if (effort != nullptr && !effort->is_null()) {
    if (*effort == "high") {
      options.reasoning_effort = actor::ReasoningEffort::kHigh;
    } else if (*effort == "max") {
      options.reasoning_effort = actor::ReasoningEffort::kMax;
    } else {
      return absl::InvalidArgumentError("reasoning_effort: expected null, \"high\" or \"max\"");
    }
  }
  const PyJson* drop = RequestField(request, "drop_thinking");
  if (drop != nullptr && !drop->is_null()) {
    if (!drop->is_boolean())
      return absl::InvalidArgumentError("drop_thinking: expected true or false");
    options.drop_thinking = drop->get<bool>();
  }
  return options;
}

// Request-level tools go on the first message when it is a system or developer message, else
// on a new content-less system message put first (as vLLM does; spec §3.4).
absl::Status AttachTools(const PyJson& request, std::vector<actor::Message>* messages) {
  const PyJson* tools = RequestField(request, "tools");
  if (tools == nullptr || tools->is_null()) return absl::OkStatus();
  V4RL_ASSIGN_OR_RETURN(
      actor::Message holder,
      actor::MessageFromJson(PyJson{{"role", "system"}, {"tools", *tools}}, "request"));
  if (!messages->empty() && (messages->front().role == actor::Role::kSystem ||
                             messages->front().role == actor::Role::kDeveloper)) {
    if (!messages->front().tools.empty()) {
      return absl::InvalidArgumentError("tools: given on the request and on messages[0]");
    }
    messages->front().tools = std::move(holder.tools);
  } else {
    messages->insert(messages->begin(), std::move(holder));
  }
  return absl::OkStatus();
}

absl::StatusOr<PyJson> EncodeLine(const actor::Tokenizer* tokenizer, const PyJson& request) {
  const PyJson* messages_json = RequestField(request, "messages");
  if (messages_json == nullptr) {
    return absl::InvalidArgumentError(
        "expected {\"messages\": [...], \"thinking_mode\": \"chat\"|\"thinking\", ...}");
  }
  V4RL_ASSIGN_OR_RETURN(std::vector<actor::Message> messages,
                        actor::MessagesFromJson(*messages_json, "messages"));
  V4RL_ASSIGN_OR_RETURN(const actor::EncodeOptions options, ParseOptions(request));
  V4RL_RETURN_IF_ERROR(AttachTools(request, &messages));
  std::vector<actor::Message> context;
  if (const PyJson* context_json = RequestField(request, "context");
      context_json != nullptr && !context_json->is_null()) {
    V4RL_ASSIGN_OR_RETURN(context, actor::MessagesFromJson(*context_json, "context"));
  }
  V4RL_ASSIGN_OR_RETURN(std::string prompt, actor::EncodeMessages(messages, options, context));
  PyJson answer = {{"prompt", prompt}};
  if (tokenizer != nullptr) answer["ids"] = tokenizer->Encode(prompt);
  return answer;
}

int RunChatEncode(const std::vector<std::string>& args) {
  FlagParser parser(
      "chat-encode", "v4rl chat-encode [--tokenizer FILE] < requests.jsonl",
      "Render DeepSeek-V4 prompts. Each input line: {\"messages\": [...], \"thinking_mode\": "
      "\"chat\"|\"thinking\", \"reasoning_effort\": null|\"high\"|\"max\", \"drop_thinking\": "
      "true|false, \"tools\": [...] (optional, attached to the system message), \"context\": "
      "[...] (optional, messages encoded earlier)}. Output: {\"prompt\": ...} (plus \"ids\" "
      "with --tokenizer) or {\"error\": ...}; the exit code is 1 if any line failed.");
  std::string path;
  parser.AddString("tokenizer", &path,
                   "also output the prompt's ids with this tokenizer.json (+ V4 tokens)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  std::unique_ptr<actor::Tokenizer> tokenizer;
  if (!path.empty()) {
    absl::StatusOr<std::unique_ptr<actor::Tokenizer>> loaded = actor::Tokenizer::FromFile(path);
    absl::Status status = loaded.status();
    if (loaded.ok()) status = (*loaded)->AddTokens(actor::DeepSeekV4AddedTokens());
    if (!status.ok()) {
      std::cerr << "v4rl chat-encode: " << status.message() << "\n";
      return 1;
    }
    tokenizer = std::move(*loaded);
  }
  return RunJsonLines(std::cin, std::cout,
                      [&](const PyJson& request) { return EncodeLine(tokenizer.get(), request); });
}

}  // namespace
}  // namespace v4rl::cli

// V4RL_REGISTER_COMMAND needs an identifier; the name has a dash.
static ::v4rl::cli::CommandRegistrar chat_encode_registrar(
    "chat-encode", "Render DeepSeek-V4 chat prompts from JSON lines", v4rl::cli::RunChatEncode);
