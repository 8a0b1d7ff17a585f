// DSML, the tool-call markup of DeepSeek-V4 (spec/chat-encoding.md §2.7): rendering an assistant's
// tool calls as a <｜DSML｜tool_calls> block, and turning parsed parameters back into an
// OpenAI-style arguments string, both exactly as DeepSeek's encoder does.
//
//   <｜DSML｜tool_calls>
//   <｜DSML｜invoke name="NAME">
//   <｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>
//   </｜DSML｜invoke>
//   </｜DSML｜tool_calls>
//
// Thread-safe: pure functions.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "actor/message.h"

namespace v4rl::actor {

// The block for `calls` (non-empty), without the blank line that precedes it in a turn.
// Arguments: a JSON-object string gives one parameter per key (string values raw with
// string="true", other values as Python json.dumps text with string="false"); a string that is
// not JSON gives one raw parameter named "arguments"; a non-string value gives one "arguments"
// parameter with its JSON text (the official encoder's behaviour). InvalidArgument naming the
// call when the arguments are JSON but not an object (the official encoder crashes there).
absl::StatusOr<std::string> RenderToolCallsDsml(std::span<const ToolCall> calls);

// One parameter read from a DSML invoke.
struct DsmlParameter {
  std::string name;
  std::string value;       // raw text between the tags
  bool is_string = false;  // string="true"
};

// The arguments string DeepSeek's parser builds: {"KEY": VALUE, ...} with string values
// JSON-quoted and the others pasted verbatim (not validated, so it may not be valid JSON).
std::string DsmlArgumentsJson(std::span<const DsmlParameter> parameters);

}  // namespace v4rl::actor
