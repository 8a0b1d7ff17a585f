#include "actor/chat_parse.h"

#include <array>
#include <initializer_list>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "actor/chat_tokens.h"
#include "actor/dsml.h"
#include "actor/unicode.h"
#include "core/status.h"

namespace v4rl::actor {
namespace {

constexpr std::array<std::string_view, 5> kMarkers = {kBosToken, kEosToken, kThinkStartToken,
                                                      kThinkEndToken, kDsmlToken};

// Text quoted for an error message: C-escaped, cut after 60 bytes.
std::string Quote(std::string_view text) {
  const bool cut = text.size() > 60;
  std::string escaped =
      absl::Utf8SafeCEscape(absl::string_view(text.data(), cut ? 60 : text.size()));
  return "\"" + escaped + (cut ? "\"..." : "\"");
}

absl::Status Error(const std::string& message) { return absl::InvalidArgumentError(message); }

// _read_until_stop: the text from `index` to the earliest of `stops` (the first listed wins a
// tie), and the index after that stop; without a stop, the rest of the text.
struct Read {
  size_t next;
  std::string_view content;
  int stop;  // index into the stops, -1 when none was found
};
Read ReadUntil(std::string_view text, size_t index, std::initializer_list<std::string_view> stops) {
  size_t best = std::string_view::npos;
  int which = -1;
  int i = 0;
  for (std::string_view stop : stops) {
    const size_t pos = text.find(stop, index);
    if (pos != std::string_view::npos && pos < best) {
      best = pos;
      which = i;
    }
    ++i;
  }
  if (which == -1) return {text.size(), text.substr(index), -1};
  return {best + (stops.begin() + which)->size(), text.substr(index, best - index), which};
}

// Python's \s for str patterns: Unicode White_Space plus U+001C..U+001F.
bool IsPythonSpace(char32_t cp) {
  return (cp >= 0x1C && cp <= 0x1F) || GetCharClass(cp) == CharClass::kSpace;
}

// Where `$` can match in `s` at or after `pos`: the end, or before a final newline.
bool DollarAt(std::string_view s, size_t pos) {
  return pos == s.size() || (pos + 1 == s.size() && s[pos] == '\n');
}

// ^\s*name="(.*?)">\n$ with DOTALL: the invoke head, which ends in ">\n" (or ">\n\n" when the
// invoke has no parameters, since `$` matches before a final newline).
std::optional<std::string> MatchInvokeHead(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    const Utf8Char c = DecodeUtf8(s, pos);
    if (!IsPythonSpace(c.cp)) break;
    pos += c.len;
  }
  constexpr std::string_view kPrefix = "name=\"";
  constexpr std::string_view kSuffix = "\">\n";
  if (s.substr(pos, kPrefix.size()) != kPrefix) return std::nullopt;
  const size_t name_start = pos + kPrefix.size();
  // The lazy group ends at the first place where the suffix and then `$` match.
  for (size_t end = name_start; end + kSuffix.size() <= s.size(); ++end) {
    if (s.substr(end, kSuffix.size()) == kSuffix && DollarAt(s, end + kSuffix.size())) {
      return std::string(s.substr(name_start, end - name_start));
    }
  }
  return std::nullopt;
}

// ^ name="(.*?)" string="(true|false)">(.*?)<$ with DOTALL: one parameter, from after
// "<｜DSML｜parameter" to before "/｜DSML｜parameter".
std::optional<DsmlParameter> MatchParameter(std::string_view s) {
  constexpr std::string_view kPrefix = " name=\"";
  constexpr std::string_view kTrue = "\" string=\"true\">";
  constexpr std::string_view kFalse = "\" string=\"false\">";
  if (!s.starts_with(kPrefix)) return std::nullopt;
  // The value runs to a final "<" (or "<" and a final newline, where `$` also matches).
  size_t value_end;
  if (s.ends_with("<")) {
    value_end = s.size() - 1;
  } else if (s.ends_with("<\n")) {
    value_end = s.size() - 2;
  } else {
    return std::nullopt;
  }
  // The lazy name ends at the first string="true|false"> that leaves room for the value.
  for (size_t end = kPrefix.size(); end < s.size(); ++end) {
    for (std::string_view flag : {kTrue, kFalse}) {
      if (s.substr(end, flag.size()) == flag && end + flag.size() <= value_end) {
        return DsmlParameter{
            std::string(s.substr(kPrefix.size(), end - kPrefix.size())),
            std::string(s.substr(end + flag.size(), value_end - end - flag.size())), flag == kTrue};
      }
    }
  }
  return std::nullopt;
}

// One invoke, from *index (just after "<｜DSML｜invoke") through its "</｜DSML｜invoke" (or the end
// of `text` when the invoke is cut off after a complete parameter, which the official parser
// accepts). Advances *index past what it read.
absl::StatusOr<ToolCall> ParseInvoke(std::string_view text, size_t* index, int call_number) {
  const Read head = ReadUntil(text, *index, {kParameterOpen, kInvokeClose});
  std::optional<std::string> name = MatchInvokeHead(head.content);
  if (!name.has_value()) {
    return Error(
        absl::StrFormat("tool call %d: malformed invoke head %s (expected "
                        "name=\"NAME\">\\n)",
                        call_number, Quote(head.content)));
  }
  std::vector<DsmlParameter> parameters;
  absl::flat_hash_set<std::string> names;
  Read read = head;
  while (read.stop == 0) {  // at "<｜DSML｜parameter"
    const Read body = ReadUntil(text, read.next, {kParameterClose});
    std::optional<DsmlParameter> parameter = MatchParameter(body.content);
    if (!parameter.has_value()) {
      return Error(
          absl::StrFormat("tool call %d (%s): malformed parameter %s (expected name=\"KEY\" "
                          "string=\"true|false\">VALUE</｜DSML｜parameter>)",
                          call_number, *name, Quote(body.content)));
    }
    if (!names.insert(parameter->name).second) {
      return Error(absl::StrFormat("tool call %d (%s): duplicate parameter \"%s\"", call_number,
                                   *name, parameter->name));
    }
    parameters.push_back(std::move(*parameter));
    read = ReadUntil(text, body.next, {kParameterOpen, kInvokeClose});
    if (read.content != ">\n") {
      return Error(absl::StrFormat("tool call %d (%s): expected \">\\n\" after a parameter, got %s",
                                   call_number, *name, Quote(read.content)));
    }
  }
  *index = read.next;
  ToolCall call;
  call.name = std::move(*name);
  call.arguments = DsmlArgumentsJson(parameters);
  return call;
}

// parse_tool_calls: the invokes of a block, from just after "\n\n<｜DSML｜tool_calls".
absl::StatusOr<std::vector<ToolCall>> ParseToolBlock(std::string_view text, size_t* index) {
  std::vector<ToolCall> calls;
  while (*index < text.size()) {
    const Read read = ReadUntil(text, *index, {kInvokeOpen, kToolCallsClose});
    *index = read.next;
    if (read.content != ">\n") {
      return Error("tool-call block: expected \">\\n\" after a tag, got " + Quote(read.content));
    }
    if (read.stop == 1) break;
    if (read.stop == -1) {
      return Error("tool-call block: ends without <｜DSML｜invoke or </｜DSML｜tool_calls>");
    }
    V4RL_ASSIGN_OR_RETURN(ToolCall call,
                          ParseInvoke(text, index, static_cast<int>(calls.size()) + 1));
    calls.push_back(std::move(call));
  }
  return calls;
}

std::string_view FindMarker(std::string_view text) {
  for (std::string_view marker : kMarkers) {
    if (text.find(marker) != std::string_view::npos) return marker;
  }
  return {};
}

// Removes every marker from *text; returns how many were removed.
int RemoveMarkers(std::string* text) {
  int removed = 0;
  for (std::string_view marker : kMarkers) {
    for (size_t pos; (pos = text->find(marker)) != std::string::npos; ++removed) {
      text->erase(pos, marker.size());
    }
  }
  return removed;
}

// Tolerant counterpart of ParseToolBlock: each invoke is parsed on its own (up to its closing tag,
// the next tag or EOS) and dropped alone when malformed. Returns where the block ended.
size_t ParseToolBlockTolerant(std::string_view text, size_t index, TolerantParse* result) {
  int call_number = 0;
  while (true) {
    const Read read = ReadUntil(text, index, {kInvokeOpen, kToolCallsClose, kEosToken});
    if (read.content != ">\n") {
      result->problems.push_back("tool-call block: expected \">\\n\" between tags, got " +
                                 Quote(read.content));
    }
    if (read.stop == 1) return read.next;
    if (read.stop != 0) {
      result->problems.push_back("tool-call block: missing </｜DSML｜tool_calls>");
      return read.stop == -1 ? text.size() : read.next - kEosToken.size();
    }
    ++call_number;
    const Read invoke =
        ReadUntil(text, read.next, {kInvokeClose, kInvokeOpen, kToolCallsClose, kEosToken});
    const size_t end = invoke.stop == -1 ? text.size() : read.next + invoke.content.size();
    size_t invoke_index = read.next;
    absl::StatusOr<ToolCall> call = ParseInvoke(text.substr(0, end), &invoke_index, call_number);
    if (call.ok()) {
      result->message.tool_calls.push_back(std::move(*call));
    } else {
      result->problems.push_back(
          absl::StrFormat("tool call %d dropped: %s", call_number, call.status().message()));
    }
    index = invoke.stop == 0 ? invoke.next : end;
  }
}

}  // namespace

absl::StatusOr<Message> ParseCompletion(std::string_view text, ThinkingMode mode) {
  Message message;
  message.role = Role::kAssistant;
  size_t index = 0;
  if (mode == ThinkingMode::kThinking) {
    const Read read = ReadUntil(text, 0, {kThinkEndToken, kToolCallsStart});
    if (read.stop != 0) return Error("completion: missing </think> before the answer");
    message.reasoning_content = std::string(read.content);
    index = read.next;
  }
  const Read read = ReadUntil(text, index, {kEosToken, kToolCallsStart});
  message.content = std::string(read.content);
  index = read.next;
  if (read.stop == 1) {
    V4RL_ASSIGN_OR_RETURN(message.tool_calls, ParseToolBlock(text, &index));
    const Read tail = ReadUntil(text, index, {kEosToken});
    if (!tail.content.empty()) {
      return Error("completion: text after the tool-call block: " + Quote(tail.content));
    }
    index = tail.next;
  } else if (read.stop == -1) {
    return Error("completion: missing <｜end▁of▁sentence｜>");
  }
  if (index != text.size()) {
    return Error("completion: text after <｜end▁of▁sentence｜>: " + Quote(text.substr(index)));
  }
  for (const std::string* field : {&message.content, &message.reasoning_content}) {
    if (std::string_view marker = FindMarker(*field); !marker.empty()) {
      return Error(absl::StrFormat("completion: %s inside %s", std::string(marker),
                                   field == &message.content ? "content" : "reasoning"));
    }
  }
  return message;
}

TolerantParse ParseCompletionTolerant(std::string_view text, ThinkingMode mode) {
  TolerantParse result;
  Message& message = result.message;
  message.role = Role::kAssistant;
  size_t index = 0;
  if (mode == ThinkingMode::kThinking) {
    if (text.starts_with(kThinkStartToken)) {
      index = kThinkStartToken.size();
      result.problems.push_back("removed a leading <think>");
    }
    const Read read = ReadUntil(text, index, {kThinkEndToken, kToolCallsStart, kEosToken});
    message.reasoning_content = std::string(read.content);
    if (read.stop == 0) {
      index = read.next;
    } else {
      // The R1 rule: no </think> means it was all reasoning; go on at the block or EOS.
      result.problems.push_back("missing </think>: the text before it is taken as reasoning");
      index = index + read.content.size();
    }
  }
  const Read read = ReadUntil(text, index, {kEosToken, kToolCallsStart});
  message.content = std::string(read.content);
  index = read.next;
  bool has_eos = read.stop == 0;
  if (read.stop == 1) {
    index = ParseToolBlockTolerant(text, index, &result);
    const Read tail = ReadUntil(text, index, {kEosToken});
    if (!tail.content.empty()) {
      result.problems.push_back("dropped text after the tool-call block: " + Quote(tail.content));
    }
    index = tail.next;
    has_eos = tail.stop == 0;
  }
  if (!has_eos) result.problems.push_back("missing <｜end▁of▁sentence｜>");
  if (index < text.size()) {
    result.problems.push_back("dropped text after <｜end▁of▁sentence｜>: " +
                              Quote(text.substr(index)));
  }
  if (int removed = RemoveMarkers(&message.content); removed > 0) {
    result.problems.push_back(absl::StrFormat("removed %d special markers from content", removed));
  }
  if (int removed = RemoveMarkers(&message.reasoning_content); removed > 0) {
    result.problems.push_back(
        absl::StrFormat("removed %d special markers from reasoning", removed));
  }
  return result;
}

}  // namespace v4rl::actor
