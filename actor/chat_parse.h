// Parsing a DeepSeek-V4 completion (the text sampled after the prompt, EOS included) into an
// assistant message: reasoning, content and DSML tool calls (spec/chat-encoding.md §5).
//
// ParseCompletion is DeepSeek's `parse_message_from_completion_text`, ported step for step so
// that it accepts and rejects the same texts (spec §5.2), with an error naming what is wrong; use
// it to score format validity. ParseCompletionTolerant recovers what it can from malformed output
// (missing EOS or </think>, broken tool calls, stray text or markers) and lists what it dropped
// or repaired.
// Thread-safe: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "actor/chat_encoding.h"
#include "actor/message.h"

namespace v4rl::actor {

// An assistant Message with content, reasoning_content (thinking mode) and tool_calls (names and
// arguments JSON text; no ids). InvalidArgument for every case the official parser rejects:
// missing </think> (thinking mode), missing EOS, a malformed tool-call block, text after the
// block or after EOS, a duplicate parameter, a special marker inside content or reasoning.
absl::StatusOr<Message> ParseCompletion(std::string_view text, ThinkingMode mode);

struct TolerantParse {
  Message message;
  // One line per repair or dropped piece ("missing EOS", "tool call 2 dropped: ..."); empty
  // for well-formed output.
  std::vector<std::string> problems;
};

// Never fails. Rules beyond the official grammar: without EOS the text ends the message; in
// thinking mode a missing </think> makes everything reasoning (the R1 rule), except that a
// tool-call block found inside it is still parsed; a malformed tool call is dropped alone; text
// after the block or after EOS and stray markers in content or reasoning are removed.
TolerantParse ParseCompletionTolerant(std::string_view text, ThinkingMode mode);

}  // namespace v4rl::actor
