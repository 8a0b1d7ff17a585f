// The DeepSeek-V4 prompt format: DeepSeek's `encode_messages` (encoding_dsv4.py) reimplemented so
// that its output is byte-identical (spec/chat-encoding.md §2-§4; DeepSeek's four fixtures are
// tests). Covers the roles system, user, assistant, tool, developer and latest_reminder; tool
// rendering; DSML tool calls; tool results merged into user turns and ordered by call id; the
// modes chat, thinking (Think-High) and thinking + max effort (Think-Max); the drop-thinking rule;
// quick-instruction task tokens; and incremental encoding after a context.
//
//   EncodeOptions options{.thinking_mode = ThinkingMode::kThinking};
//   V4RL_ASSIGN_OR_RETURN(std::string prompt, EncodeMessages(messages, options));
//
// Thread-safe: pure functions.
#pragma once

#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "actor/message.h"

namespace v4rl::actor {

enum class ThinkingMode {
  kChat,      // non-think: every assistant turn starts with "<｜Assistant｜></think>"
  kThinking,  // the model reasons inside <think>...</think> first
};

enum class ReasoningEffort {
  kNone,  // same prompt as kHigh (Think-High)
  kHigh,
  kMax,  // Think-Max: the effort text right after BOS (thinking mode only)
};

struct EncodeOptions {
  ThinkingMode thinking_mode = ThinkingMode::kThinking;
  ReasoningEffort reasoning_effort = ReasoningEffort::kNone;
  // Remove the reasoning of turns before the last user turn (spec §4.1); forced off when any
  // message has tools.
  bool drop_thinking = true;
  // Start with BOS (only when there is no context).
  bool add_bos = true;
};

// encode_messages(messages, thinking_mode, context, drop_thinking, add_default_bos_token,
// reasoning_effort): the text of `messages` rendered after `context` (messages encoded earlier,
// whose text is not repeated). InvalidArgument when DeepSeek's encoder would fail (a tool call's
// arguments are JSON but not an object).
absl::StatusOr<std::string> EncodeMessages(std::span<const Message> messages,
                                           const EncodeOptions& options,
                                           std::span<const Message> context = {});

// The drop_thinking the encoder applies: false when any message (context included) has tools.
bool EffectiveDropThinking(std::span<const Message> messages, std::span<const Message> context,
                           const EncodeOptions& options);

}  // namespace v4rl::actor
