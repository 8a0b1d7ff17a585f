// Chat messages as DeepSeek's V4 encoder reads them (OpenAI shape, spec/chat-encoding.md §2):
// plain structs for C++ callers, and the conversion from/to the JSON that the CLIs and
// request files carry.
//
// The JSON conversion checks every field the encoder reads and returns InvalidArgument naming it
// ("messages[2].tool_calls[0].function.name: expected a string"). Where DeepSeek's Python encoder
// would crash or print Python's `None`, the conversion rejects the message instead.
// Thread-safe: plain values and pure functions.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "actor/py_json.h"

namespace v4rl::actor {

enum class Role { kSystem, kUser, kAssistant, kTool, kDeveloper, kLatestReminder };

std::string_view RoleName(Role role);

struct ToolCall {
  // OpenAI `id` (or `function.id`); orders the tool results that answer it. May be empty.
  std::string id;
  std::string name;
  // `function.arguments`: normally a string holding a JSON object. Any other value reproduces the
  // official encoder's fallback of one parameter named "arguments" (spec §2.7 pitfall).
  PyJson arguments = "";
};

struct Message {
  Role role = Role::kUser;
  // Text of the turn. For tool messages given a list of content parts, the parts already joined
  // as the encoder renders them. Required non-empty for developer messages.
  std::string content;
  std::string reasoning_content;     // assistant
  std::vector<ToolCall> tool_calls;  // assistant
  // `function` objects of an OpenAI tools list; rendered for system and developer messages, and
  // any message having them keeps all reasoning (spec §2.1 step 4).
  std::vector<PyJson> tools;
  PyJson response_format;    // system/developer; rendered when truthy
  std::string tool_call_id;  // tool
  // Quick-instruction task (spec §2.8): action, query, authority, domain, title or read_url.
  std::optional<std::string> task;
  bool wo_eos = false;  // assistant: omit the closing EOS
};

// Parses one message object; `path` prefixes error messages ("messages[3]").
absl::StatusOr<Message> MessageFromJson(const PyJson& json, std::string_view path);
// Parses a JSON array of messages; `path` names the array ("messages").
absl::StatusOr<std::vector<Message>> MessagesFromJson(const PyJson& json, std::string_view path);

// The shape DeepSeek's parser returns: {"role", "content", "reasoning_content", "tool_calls":
// [{"type": "function", "function": {"name", "arguments"}}]} (ids only when set).
PyJson AssistantMessageToJson(const Message& message);

}  // namespace v4rl::actor
