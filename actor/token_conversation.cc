#include "actor/token_conversation.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "actor/chat_tokens.h"
#include "core/status.h"

namespace v4rl::actor {
namespace {

bool EndsWithAssistant(const std::vector<Message>& messages) {
  return !messages.empty() && messages.back().role == Role::kAssistant;
}

}  // namespace

absl::StatusOr<TokenConversation> TokenConversation::Start(const Tokenizer* tokenizer,
                                                           std::vector<Message> messages,
                                                           const EncodeOptions& options) {
  TokenConversation conversation(tokenizer, options);
  V4RL_ASSIGN_OR_RETURN(const std::string prompt, EncodeMessages(messages, options));
  tokenizer->Encode(prompt, &conversation.ids_);
  conversation.messages_ = std::move(messages);
  return conversation;
}

absl::Status TokenConversation::AppendCompletion(std::span<const int32_t> completion_ids,
                                                 Message message) {
  if (message.role != Role::kAssistant) {
    return absl::InvalidArgumentError("AppendCompletion: the message must be an assistant turn");
  }
  if (EndsWithAssistant(messages_)) {
    return absl::FailedPreconditionError(
        "AppendCompletion: the conversation already ends with an assistant turn");
  }
  for (size_t i = 0; i < completion_ids.size(); ++i) {
    if (!tokenizer_->TokenBytes(completion_ids[i]).has_value()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "AppendCompletion: completion_ids[%d] = %d is not a token", i, completion_ids[i]));
    }
  }
  const std::optional<int32_t> eos = tokenizer_->TokenToId(kEosToken);
  if (!message.wo_eos &&
      (completion_ids.empty() || !eos.has_value() || completion_ids.back() != *eos)) {
    return absl::InvalidArgumentError(
        "AppendCompletion: the completion does not end with <｜end▁of▁sentence｜>, so the "
        "rendered turn would not match it");
  }
  ids_.insert(ids_.end(), completion_ids.begin(), completion_ids.end());
  messages_.push_back(std::move(message));
  return absl::OkStatus();
}

absl::Status TokenConversation::AppendMessages(std::vector<Message> messages) {
  if (!EndsWithAssistant(messages_)) {
    return absl::FailedPreconditionError(
        "AppendMessages: the conversation must end with a completion (consecutive user or tool "
        "turns would merge into one when rendered together)");
  }
  if (options_.thinking_mode == ThinkingMode::kThinking &&
      EffectiveDropThinking(messages, messages_, options_)) {
    return absl::FailedPreconditionError(
        "AppendMessages: thinking mode drops earlier reasoning, so the next prompt would not "
        "extend this one; set drop_thinking=false or attach the tools to a message");
  }
  V4RL_ASSIGN_OR_RETURN(const std::string text, EncodeMessages(messages, options_, messages_));
  tokenizer_->Encode(text, &ids_);
  messages_.insert(messages_.end(), std::make_move_iterator(messages.begin()),
                   std::make_move_iterator(messages.end()));
  return absl::OkStatus();
}

}  // namespace v4rl::actor
