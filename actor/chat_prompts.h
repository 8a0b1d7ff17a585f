// The fixed prompt texts of DeepSeek's V4 encoder (spec/chat-encoding.md §2.5, §2.6, §3.2), with
// the DSML and thinking markers already substituted. Pinned by length and SHA-256 in
// tests/actor/chat_prompts_test.cc against the spec and fixtures/dsv4-encoding/constants.json.
// Thread-safe: constants.
#pragma once

#include <string_view>

namespace v4rl::actor {

// Tool instructions up to the schema lines (890 bytes).
inline constexpr std::string_view kToolsPrefix =
    R"txt(## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

)txt";

// After the schema lines (99 bytes; ends with a newline, so the next marker starts a line).
inline constexpr std::string_view kToolsSuffix =
    R"txt(

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
)txt";

// Header of a response_format block; json.dumps(response_format) follows it (80 bytes).
inline constexpr std::string_view kResponseFormatHeader =
    R"txt(## Response Format:

You MUST strictly adhere to the following schema to reply:
)txt";

// The Think-Max text written right after BOS (476 bytes, ends with a blank line).
inline constexpr std::string_view kReasoningEffortMax =
    R"txt(Reasoning Effort: Absolute maximum with no shortcuts permitted.
You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.
Explicitly write out your entire deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.

)txt";

}  // namespace v4rl::actor
