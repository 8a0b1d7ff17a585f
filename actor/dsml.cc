#include "actor/dsml.h"

#include "absl/strings/str_format.h"
#include "actor/chat_tokens.h"
#include "actor/py_json.h"
#include "core/status.h"

namespace v4rl::actor {
namespace {

// json.loads inside the encoder fails (and the encoder falls back to a raw "arguments"
// parameter) past Python's recursion limit; 512 levels is deeper than any real tool call.
constexpr PyJsonLimits kArgumentsLimits = {.max_bytes = size_t{64} << 20, .max_depth = 512};

void AppendParameter(std::string_view key, const PyJson& value, std::string* out) {
  const bool is_string = value.is_string();
  *out += "<";
  *out += kDsmlToken;
  *out += "parameter name=\"";
  *out += key;
  *out += is_string ? "\" string=\"true\">" : "\" string=\"false\">";
  if (is_string) {
    out->append(value.get_ref<const std::string&>());
  } else {
    out->append(PyJsonDumps(value));
  }
  *out += "</";
  *out += kDsmlToken;
  *out += "parameter>";
}

// The parameter lines of one call, joined by newlines.
absl::StatusOr<std::string> RenderParameters(const ToolCall& call, size_t index) {
  std::string out;
  if (!call.arguments.is_string()) {
    AppendParameter("arguments", call.arguments, &out);
    return out;
  }
  const std::string& text = call.arguments.get_ref<const std::string&>();
  // json.loads rejects a leading byte-order mark, which nlohmann would skip.
  absl::StatusOr<PyJson> parsed = text.starts_with("\xEF\xBB\xBF")
                                      ? absl::StatusOr<PyJson>(absl::InvalidArgumentError("BOM"))
                                      : ParsePyJson(text, "arguments", kArgumentsLimits);
  if (!parsed.ok()) {
    AppendParameter("arguments", call.arguments, &out);
    return out;
  }
  if (!parsed->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tool_calls[%d] (%s): arguments must be a JSON object, got %s", index,
                        call.name, parsed->is_binary() ? "number" : parsed->type_name()));
  }
  bool first = true;
  for (const auto& [key, value] : parsed->items()) {
    if (!first) out.push_back('\n');
    first = false;
    AppendParameter(key, value, &out);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> RenderToolCallsDsml(std::span<const ToolCall> calls) {
  std::string out(kToolCallsOpen);
  out += '\n';
  for (size_t i = 0; i < calls.size(); ++i) {
    V4RL_ASSIGN_OR_RETURN(const std::string parameters, RenderParameters(calls[i], i));
    if (i > 0) out.push_back('\n');
    out += kInvokeOpen;
    out += " name=\"" + calls[i].name + "\">\n" + parameters + "\n";
    out += kInvokeClose;
    out += '>';
  }
  out += '\n';
  out += kToolCallsClose;
  return out;
}

std::string DsmlArgumentsJson(std::span<const DsmlParameter> parameters) {
  std::string out = "{";
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (i > 0) out.append(", ");
    AppendPyJsonString(parameters[i].name, &out);
    out.append(": ");
    if (parameters[i].is_string) {
      AppendPyJsonString(parameters[i].value, &out);
    } else {
      out.append(parameters[i].value);
    }
  }
  out.push_back('}');
  return out;
}

}  // namespace v4rl::actor
