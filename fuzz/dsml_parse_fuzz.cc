// libFuzzer target: DSML both ways on arbitrary bytes. The input is parsed as a completion
// (actor/chat_parse.h, strict and tolerant, both modes) and as a chat request (Python-compatible
// JSON -> messages -> DeepSeek-V4 prompt with DSML tool calls). Everything must return a Status or
// a result and never crash, hang or read out of bounds; a strictly parsed completion must render
// again as an assistant turn.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "actor/chat_encoding.h"
#include "actor/chat_parse.h"
#include "actor/message.h"
#include "actor/py_json.h"

namespace {

using v4rl::actor::ThinkingMode;

void ParseCompletions(std::string_view text) {
  for (ThinkingMode mode : {ThinkingMode::kChat, ThinkingMode::kThinking}) {
    auto message = v4rl::actor::ParseCompletion(text, mode);
    if (message.ok()) {
      v4rl::actor::Message user;
      const std::vector<v4rl::actor::Message> turn = {user, *message};
      if (!v4rl::actor::EncodeMessages(turn, {.thinking_mode = mode}).ok()) __builtin_trap();
    }
    (void)v4rl::actor::ParseCompletionTolerant(text, mode);
  }
}

void EncodeRequest(std::string_view text) {
  auto json = v4rl::actor::ParsePyJson(text, "fuzz");
  if (!json.ok()) return;
  auto messages = v4rl::actor::MessagesFromJson(*json, "messages");
  if (!messages.ok()) return;
  for (ThinkingMode mode : {ThinkingMode::kChat, ThinkingMode::kThinking}) {
    (void)v4rl::actor::EncodeMessages(*messages, {.thinking_mode = mode});
    (void)v4rl::actor::EncodeMessages(*messages,
                                      {.thinking_mode = mode,
                                       .reasoning_effort = v4rl::actor::ReasoningEffort::kMax,
                                       .drop_thinking = false},
                                      *messages);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ParseCompletions(text);
  EncodeRequest(text);
  return 0;
}
