// Marker strings of the DeepSeek-V4 chat format (spec/chat-encoding.md §1.1; the encoder's
// constants in fixtures/dsv4-encoding/constants.json). "｜" is U+FF5C and "▁" U+2581.
// Thread-safe: constants.
#pragma once

#include <string_view>

namespace v4rl::actor {

inline constexpr std::string_view kBosToken = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEosToken = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUserToken = "<｜User｜>";
inline constexpr std::string_view kAssistantToken = "<｜Assistant｜>";
inline constexpr std::string_view kLatestReminderToken = "<｜latest_reminder｜>";
inline constexpr std::string_view kThinkStartToken = "<think>";
inline constexpr std::string_view kThinkEndToken = "</think>";
inline constexpr std::string_view kDsmlToken = "｜DSML｜";

// DSML tags (spec §2.7). The "<" and "</" around ｜DSML｜ are ordinary text.
inline constexpr std::string_view kToolCallsOpen = "<｜DSML｜tool_calls>";
inline constexpr std::string_view kToolCallsClose = "</｜DSML｜tool_calls>";
inline constexpr std::string_view kInvokeOpen = "<｜DSML｜invoke";
inline constexpr std::string_view kInvokeClose = "</｜DSML｜invoke";
inline constexpr std::string_view kParameterOpen = "<｜DSML｜parameter";
inline constexpr std::string_view kParameterClose = "/｜DSML｜parameter";
// How a tool-call block starts inside an assistant turn: always after a blank line.
inline constexpr std::string_view kToolCallsStart = "\n\n<｜DSML｜tool_calls";

}  // namespace v4rl::actor
