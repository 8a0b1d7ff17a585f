#include "actor/chat_encoding.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "actor/chat_prompts.h"
#include "actor/chat_tokens.h"
#include "actor/dsml.h"
#include "actor/py_json.h"
#include "core/status.h"

namespace v4rl::actor {
namespace {

// A part of a merged user turn: its own text, or a tool result.
struct Block {
  bool is_tool_result = false;
  std::string text;         // the text, or the tool output
  std::string tool_use_id;  // tool results: the call they answer
};

// A message after the merge step (spec §2.1): tool messages have become blocks of user turns.
struct Turn {
  Role role;                  // never kTool
  const Message* message;     // the original; for user turns, the first message merged into it
  std::vector<Block> blocks;  // user turns only
  std::optional<std::string> task;
};

bool IsUserLike(Role role) { return role == Role::kUser || role == Role::kDeveloper; }

// Tool messages become tool-result blocks of a user turn and user messages become text blocks;
// both join the previous turn when it is a user turn (a user message only when that turn has no
// task), exactly as merge_tool_messages does.
std::vector<Turn> MergeToolMessages(std::span<const Message> messages) {
  std::vector<Turn> turns;
  for (const Message& message : messages) {
    Turn* last = turns.empty() ? nullptr : &turns.back();
    const bool after_user = last != nullptr && last->role == Role::kUser;
    if (message.role == Role::kTool) {
      Block block{true, message.content, message.tool_call_id};
      if (after_user) {
        last->blocks.push_back(std::move(block));
      } else {
        turns.push_back({Role::kUser, &message, {std::move(block)}, std::nullopt});
      }
    } else if (message.role == Role::kUser) {
      Block block{false, message.content, ""};
      if (after_user && !last->task.has_value()) {
        last->blocks.push_back(std::move(block));
      } else {
        turns.push_back({Role::kUser, &message, {std::move(block)}, message.task});
      }
    } else {
      turns.push_back({message.role, &message, {}, message.task});
    }
  }
  return turns;
}

using CallOrder = absl::flat_hash_map<std::string, int>;

// Updates `order` to the calls of an assistant message with tool calls (later ids win).
void RecordCallOrder(const Message& message, CallOrder* order) {
  if (message.role != Role::kAssistant || message.tool_calls.empty()) return;
  order->clear();
  for (size_t i = 0; i < message.tool_calls.size(); ++i) {
    const std::string& id = message.tool_calls[i].id;
    if (!id.empty()) (*order)[id] = static_cast<int>(i);
  }
}

// Re-orders the tool results of each user turn by the position of their call in the latest
// assistant message with tool calls (stable; an unknown id sorts as position 0). `order` starts
// from what earlier messages set.
void SortToolResults(std::vector<Turn>& turns, CallOrder order) {
  for (Turn& turn : turns) {
    if (turn.role == Role::kAssistant) {
      RecordCallOrder(*turn.message, &order);
      continue;
    }
    if (turn.role != Role::kUser || order.empty()) continue;
    std::vector<Block> results;
    for (const Block& block : turn.blocks) {
      if (block.is_tool_result) results.push_back(block);
    }
    if (results.size() < 2) continue;
    const auto position = [&order](const Block& block) {
      auto it = order.find(absl::string_view(block.tool_use_id));
      return it == order.end() ? 0 : it->second;
    };
    std::stable_sort(results.begin(), results.end(),
                     [&](const Block& a, const Block& b) { return position(a) < position(b); });
    size_t next = 0;
    for (Block& block : turn.blocks) {
      if (block.is_tool_result) block = std::move(results[next++]);
    }
  }
}

int LastUserIndex(const std::vector<Turn>& turns) {
  for (int i = static_cast<int>(turns.size()) - 1; i >= 0; --i) {
    if (IsUserLike(turns[i].role)) return i;
  }
  return -1;
}

// Drops developer turns before the last user turn (reasoning of earlier assistant turns is not
// rendered either; see RenderTurn).
std::vector<Turn> DropThinkingTurns(const std::vector<Turn>& turns) {
  const int last_user = LastUserIndex(turns);
  std::vector<Turn> kept;
  for (int i = 0; i < static_cast<int>(turns.size()); ++i) {
    if (turns[i].role != Role::kDeveloper || i >= last_user) kept.push_back(turns[i]);
  }
  return kept;
}

void AppendTools(const Message& message, std::string* out) {
  if (!message.tools.empty()) {
    *out += "\n\n";
    *out += kToolsPrefix;
    for (size_t i = 0; i < message.tools.size(); ++i) {
      if (i > 0) *out += '\n';
      *out += PyJsonDumps(message.tools[i]);
    }
    *out += kToolsSuffix;
  }
  if (PyTruthy(message.response_format)) {
    *out += "\n\n";
    *out += kResponseFormatHeader;
    *out += PyJsonDumps(message.response_format);
  }
}

std::string_view TaskToken(const std::string& task) {
  if (task == "action") return "<｜action｜>";
  if (task == "query") return "<｜query｜>";
  if (task == "authority") return "<｜authority｜>";
  if (task == "domain") return "<｜domain｜>";
  if (task == "title") return "<｜title｜>";
  return "<｜read_url｜>";
}

struct RenderContext {
  const std::vector<Turn>& turns;
  bool thinking;
  bool drop_thinking;
  ReasoningEffort effort;
  int last_user;
};

// render_message: turn `index` plus, when the next turn is an assistant or latest_reminder turn
// (or there is none), its generation suffix or task token.
absl::Status RenderTurn(const RenderContext& ctx, int index, std::string* out) {
  const Turn& turn = ctx.turns[index];
  const Message& message = *turn.message;
  if (index == 0 && ctx.thinking && ctx.effort == ReasoningEffort::kMax) {
    *out += kReasoningEffortMax;
  }
  switch (turn.role) {
    case Role::kSystem:
      *out += message.content;
      AppendTools(message, out);
      break;
    case Role::kDeveloper:
      *out += kUserToken;
      *out += message.content;
      AppendTools(message, out);
      break;
    case Role::kUser:
      *out += kUserToken;
      for (size_t i = 0; i < turn.blocks.size(); ++i) {
        if (i > 0) *out += "\n\n";
        if (turn.blocks[i].is_tool_result) {
          *out += "<tool_result>" + turn.blocks[i].text + "</tool_result>";
        } else {
          *out += turn.blocks[i].text;
        }
      }
      break;
    case Role::kLatestReminder:
      *out += kLatestReminderToken;
      *out += message.content;
      break;
    case Role::kAssistant: {
      const bool previous_has_task = index > 0 && ctx.turns[index - 1].task.has_value();
      if (ctx.thinking && !previous_has_task && (!ctx.drop_thinking || index > ctx.last_user)) {
        *out += message.reasoning_content;
        *out += kThinkEndToken;
      }
      *out += message.content;
      if (!message.tool_calls.empty()) {
        V4RL_ASSIGN_OR_RETURN(const std::string block, RenderToolCallsDsml(message.tool_calls));
        *out += "\n\n" + block;
      }
      if (!message.wo_eos) *out += kEosToken;
      break;
    }
    case Role::kTool:
      break;  // merged into user turns
  }

  const int next = index + 1;
  if (next < static_cast<int>(ctx.turns.size()) && ctx.turns[next].role != Role::kAssistant &&
      ctx.turns[next].role != Role::kLatestReminder) {
    return absl::OkStatus();
  }
  if (turn.task.has_value()) {
    if (*turn.task == "action") {
      *out += kAssistantToken;
      *out += ctx.thinking ? kThinkStartToken : kThinkEndToken;
    }
    *out += TaskToken(*turn.task);
  } else if (IsUserLike(turn.role)) {
    *out += kAssistantToken;
    const bool open_thinking = ctx.thinking && (!ctx.drop_thinking || index >= ctx.last_user);
    *out += open_thinking ? kThinkStartToken : kThinkEndToken;
  }
  return absl::OkStatus();
}

bool AnyTools(const std::vector<Turn>& turns) {
  return std::any_of(turns.begin(), turns.end(), [](const Turn& turn) {
    return turn.role != Role::kUser && !turn.message->tools.empty();
  });
}

}  // namespace

bool EffectiveDropThinking(std::span<const Message> messages, std::span<const Message> context,
                           const EncodeOptions& options) {
  return options.drop_thinking && !AnyTools(MergeToolMessages(context)) &&
         !AnyTools(MergeToolMessages(messages));
}

absl::StatusOr<std::string> EncodeMessages(std::span<const Message> messages,
                                           const EncodeOptions& options,
                                           std::span<const Message> context) {
  // The new messages' results are ordered by calls made in the context too.
  CallOrder context_order;
  for (const Message& message : context) RecordCallOrder(message, &context_order);
  std::vector<Turn> turns = MergeToolMessages(messages);
  SortToolResults(turns, context_order);
  std::vector<Turn> context_turns = MergeToolMessages(context);
  SortToolResults(context_turns, {});

  std::vector<Turn> full = context_turns;
  full.insert(full.end(), turns.begin(), turns.end());
  const bool thinking = options.thinking_mode == ThinkingMode::kThinking;
  const bool drop = options.drop_thinking && !AnyTools(full);
  size_t num_context = context_turns.size();
  if (thinking && drop) {
    full = DropThinkingTurns(full);
    num_context = DropThinkingTurns(context_turns).size();
  }

  std::string prompt;
  if (options.add_bos && context.empty()) prompt += kBosToken;
  const RenderContext ctx{full, thinking, drop, options.reasoning_effort, LastUserIndex(full)};
  for (size_t i = num_context; i < full.size(); ++i) {
    V4RL_RETURN_IF_ERROR(RenderTurn(ctx, static_cast<int>(i), &prompt));
  }
  return prompt;
}

}  // namespace v4rl::actor
