#include "actor/message.h"

#include <array>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace v4rl::actor {
namespace {

constexpr std::array<std::string_view, 6> kTasks = {"action", "query", "authority",
                                                    "domain", "title", "read_url"};

absl::Status Invalid(std::string_view path, std::string_view field, std::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrFormat("%s.%s: %s", std::string(path), std::string(field), std::string(message)));
}

std::string TypeName(const PyJson& value) {
  return value.is_binary() ? "number" : std::string(value.type_name());
}

const PyJson* Find(const PyJson& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

bool IsNullOrAbsent(const PyJson* value) { return value == nullptr || value->is_null(); }

absl::StatusOr<Role> ParseRole(const PyJson& json, std::string_view path) {
  const PyJson* role = Find(json, "role");
  if (role != nullptr && role->is_string()) {
    const std::string& name = role->get_ref<const std::string&>();
    for (Role r : {Role::kSystem, Role::kUser, Role::kAssistant, Role::kTool, Role::kDeveloper,
                   Role::kLatestReminder}) {
      if (name == RoleName(r)) return r;
    }
  }
  return Invalid(path, "role",
                 "expected one of system, user, assistant, tool, developer, latest_reminder");
}

// A string field; absent (and null when `null_ok`) gives `absent`.
absl::StatusOr<std::string> StringField(const PyJson& json, const char* key, std::string_view path,
                                        bool null_ok, std::string_view absent = "") {
  const PyJson* value = Find(json, key);
  if (value == nullptr || (null_ok && value->is_null())) return std::string(absent);
  if (!value->is_string()) {
    return Invalid(path, key, "expected a string, got " + TypeName(*value));
  }
  return value->get<std::string>();
}

// Tool output given as content parts: text parts joined by blank lines, others named.
absl::StatusOr<std::string> JoinContentParts(const PyJson& parts, std::string_view path) {
  std::vector<std::string> texts;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string part_path = absl::StrFormat("%s.content[%d]", std::string(path), i);
    const PyJson& part = parts[i];
    if (!part.is_object()) return Invalid(part_path, "type", "expected a content part object");
    const PyJson* type = Find(part, "type");
    if (type == nullptr || !type->is_string()) {
      return Invalid(part_path, "type", "expected a string");
    }
    if (*type == "text") {
      V4RL_ASSIGN_OR_RETURN(texts.emplace_back(), StringField(part, "text", part_path, false));
    } else {
      texts.push_back("[Unsupported " + type->get<std::string>() + "]");
    }
  }
  return absl::StrJoin(texts, "\n\n");
}

absl::StatusOr<std::string> ParseContent(const PyJson& json, Role role, std::string_view path) {
  switch (role) {
    case Role::kSystem:
    case Role::kAssistant:
      return StringField(json, "content", path, /*null_ok=*/true);
    case Role::kUser:
      return StringField(json, "content", path, /*null_ok=*/false);
    case Role::kLatestReminder: {
      if (IsNullOrAbsent(Find(json, "content"))) {
        return Invalid(path, "content", "a latest_reminder message needs a string");
      }
      return StringField(json, "content", path, false);
    }
    case Role::kDeveloper: {
      V4RL_ASSIGN_OR_RETURN(std::string content, StringField(json, "content", path, true));
      if (content.empty()) return Invalid(path, "content", "a developer message needs text");
      return content;
    }
    case Role::kTool: {
      const PyJson* content = Find(json, "content");
      if (content != nullptr && content->is_array()) return JoinContentParts(*content, path);
      return StringField(json, "content", path, false);
    }
  }
  return std::string();
}

absl::StatusOr<std::vector<ToolCall>> ParseToolCalls(const PyJson& json, std::string_view path) {
  std::vector<ToolCall> calls;
  const PyJson* list = Find(json, "tool_calls");
  if (IsNullOrAbsent(list)) return calls;
  if (!list->is_array()) return Invalid(path, "tool_calls", "expected an array");
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string call_path = absl::StrFormat("%s.tool_calls[%d]", std::string(path), i);
    const PyJson& call = (*list)[i];
    const PyJson* function = call.is_object() ? Find(call, "function") : nullptr;
    if (function == nullptr || !function->is_object()) {
      return Invalid(call_path, "function", "expected an object");
    }
    const std::string function_path = call_path + ".function";
    ToolCall parsed;
    // The encoder takes `id`, or `function.id` when `id` is empty or absent.
    V4RL_ASSIGN_OR_RETURN(parsed.id, StringField(call, "id", call_path, true));
    if (parsed.id.empty()) {
      V4RL_ASSIGN_OR_RETURN(parsed.id, StringField(*function, "id", function_path, true));
    }
    const PyJson* name = Find(*function, "name");
    if (name == nullptr || !name->is_string()) {
      return Invalid(function_path, "name", "expected a string");
    }
    parsed.name = name->get<std::string>();
    const PyJson* arguments = Find(*function, "arguments");
    if (arguments == nullptr) return Invalid(function_path, "arguments", "missing");
    parsed.arguments = *arguments;
    calls.push_back(std::move(parsed));
  }
  return calls;
}

absl::StatusOr<std::vector<PyJson>> ParseTools(const PyJson& json, std::string_view path) {
  std::vector<PyJson> functions;
  const PyJson* tools = Find(json, "tools");
  if (IsNullOrAbsent(tools)) return functions;
  if (!tools->is_array()) return Invalid(path, "tools", "expected an array");
  for (size_t i = 0; i < tools->size(); ++i) {
    const PyJson& tool = (*tools)[i];
    const PyJson* function = tool.is_object() ? Find(tool, "function") : nullptr;
    if (function == nullptr) {
      return Invalid(path, absl::StrFormat("tools[%d]", i), "expected {\"function\": ...}");
    }
    functions.push_back(*function);
  }
  return functions;
}

absl::StatusOr<std::optional<std::string>> ParseTask(const PyJson& json, std::string_view path) {
  const PyJson* task = Find(json, "task");
  if (IsNullOrAbsent(task)) return std::nullopt;
  if (task->is_string()) {
    for (std::string_view valid : kTasks) {
      if (task->get_ref<const std::string&>() == valid) return std::string(valid);
    }
  }
  return Invalid(path, "task", "expected one of action, query, authority, domain, title, read_url");
}

}  // namespace

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kSystem:
      return "system";
    case Role::kUser:
      return "user";
    case Role::kAssistant:
      return "assistant";
    case Role::kTool:
      return "tool";
    case Role::kDeveloper:
      return "developer";
    case Role::kLatestReminder:
      return "latest_reminder";
  }
  return "unknown";
}

absl::StatusOr<Message> MessageFromJson(const PyJson& json, std::string_view path) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected a message object", std::string(path)));
  }
  Message message;
  V4RL_ASSIGN_OR_RETURN(message.role, ParseRole(json, path));
  V4RL_ASSIGN_OR_RETURN(message.content, ParseContent(json, message.role, path));
  // User and tool messages are rebuilt by the encoder's merge step, which keeps only their text,
  // task (users) and call id (tools); it never reads their other fields.
  switch (message.role) {
    case Role::kTool: {
      V4RL_ASSIGN_OR_RETURN(message.tool_call_id, StringField(json, "tool_call_id", path, true));
      return message;
    }
    case Role::kUser: {
      V4RL_ASSIGN_OR_RETURN(message.task, ParseTask(json, path));
      return message;
    }
    case Role::kAssistant: {
      V4RL_ASSIGN_OR_RETURN(message.reasoning_content,
                            StringField(json, "reasoning_content", path, true));
      V4RL_ASSIGN_OR_RETURN(message.tool_calls, ParseToolCalls(json, path));
      if (const PyJson* wo_eos = Find(json, "wo_eos")) message.wo_eos = PyTruthy(*wo_eos);
      break;
    }
    case Role::kSystem:
    case Role::kDeveloper:
      if (const PyJson* format = Find(json, "response_format")) message.response_format = *format;
      break;
    case Role::kLatestReminder:
      break;
  }
  V4RL_ASSIGN_OR_RETURN(message.tools, ParseTools(json, path));
  V4RL_ASSIGN_OR_RETURN(message.task, ParseTask(json, path));
  return message;
}

absl::StatusOr<std::vector<Message>> MessagesFromJson(const PyJson& json, std::string_view path) {
  if (!json.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected an array of messages", std::string(path)));
  }
  std::vector<Message> messages;
  messages.reserve(json.size());
  for (size_t i = 0; i < json.size(); ++i) {
    V4RL_ASSIGN_OR_RETURN(
        Message message, MessageFromJson(json[i], absl::StrFormat("%s[%d]", std::string(path), i)));
    messages.push_back(std::move(message));
  }
  return messages;
}

PyJson AssistantMessageToJson(const Message& message) {
  PyJson calls = PyJson::array();
  for (const ToolCall& call : message.tool_calls) {
    PyJson json = PyJson::object();
    if (!call.id.empty()) json["id"] = call.id;
    json["type"] = "function";
    json["function"] = {{"name", call.name}, {"arguments", call.arguments}};
    calls.push_back(std::move(json));
  }
  PyJson json = PyJson::object();
  json["role"] = "assistant";
  json["content"] = message.content;
  json["reasoning_content"] = message.reasoning_content;
  json["tool_calls"] = std::move(calls);
  return json;
}

}  // namespace v4rl::actor
