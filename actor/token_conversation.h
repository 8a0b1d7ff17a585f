// Token-in/token-out multi-turn conversations (spec/chat-encoding.md §4.3). An RL rollout samples
// ids; re-rendering a parsed completion is lossy (arguments come back re-serialized), so each
// later prompt is built as: the previous prompt's ids + the sampled ids, verbatim + the tokens of
// the new turns rendered incrementally (encode_messages with the history as context). That equals
// the tokens of the whole conversation rendered at once whenever the sampled ids are the
// canonical ones, because every turn boundary is a special token.
//
//   V4RL_ASSIGN_OR_RETURN(auto conv, TokenConversation::Start(&tokenizer, prompt, options));
//   ... sample from conv.ids() ...
//   V4RL_RETURN_IF_ERROR(conv.AppendCompletion(sampled_ids, parsed_message));
//   V4RL_RETURN_IF_ERROR(conv.AppendMessages({tool_result}));
//
// Only conversations whose earlier turns render the same later can be extended: in thinking mode
// that needs drop_thinking off or tools attached to a message (spec §4.2); AppendMessages returns
// FailedPrecondition otherwise.
//
// Ownership: holds a pointer to the tokenizer, which must outlive it. Thread-compatible.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "actor/chat_encoding.h"
#include "actor/message.h"
#include "actor/tokenizer.h"

namespace v4rl::actor {

class TokenConversation {
 public:
  // Encodes `messages` (with BOS) as the first prompt.
  static absl::StatusOr<TokenConversation> Start(const Tokenizer* tokenizer,
                                                 std::vector<Message> messages,
                                                 const EncodeOptions& options);

  // [num_tokens] everything so far.
  const std::vector<int32_t>& ids() const { return ids_; }
  const std::vector<Message>& messages() const { return messages_; }

  // Appends sampled ids unchanged and records `message`, the assistant turn they encode (from
  // ParseCompletion, with tool-call ids filled in so results can be ordered). InvalidArgument
  // when `message` is not an assistant message, an id is not a token, or the ids do not end with
  // EOS (unless message.wo_eos); FailedPrecondition when the conversation already ends with an
  // assistant turn.
  absl::Status AppendCompletion(std::span<const int32_t> completion_ids, Message message);

  // Renders `messages` (tool results, a user turn, ...) after the history and appends their
  // tokens. FailedPrecondition unless the conversation ends with a completion and its earlier
  // reasoning is kept (see above); errors of EncodeMessages otherwise.
  absl::Status AppendMessages(std::vector<Message> messages);

 private:
  TokenConversation(const Tokenizer* tokenizer, const EncodeOptions& options)
      : tokenizer_(tokenizer), options_(options) {}

  const Tokenizer* tokenizer_;
  EncodeOptions options_;
  std::vector<Message> messages_;
  std::vector<int32_t> ids_;
};

}  // namespace v4rl::actor
