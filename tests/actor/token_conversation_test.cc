// Token-level conversation extension (spec/chat-encoding.md §4.3) with the real tokenizer: the
// ids after each step equal the tokens of the whole conversation rendered at once, while sampled
// ids are kept verbatim.
#include "actor/token_conversation.h"

#include <string>
#include <vector>

#include "actor/chat_parse.h"
#include "actor/chat_tokens.h"
#include "actor/py_json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/actor/actor_test_util.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::actor {
namespace {

using ::testing::HasSubstr;
using ::v4rl::testing::StatusIs;

std::vector<Message> Messages(const std::string& json_array) {
  absl::StatusOr<PyJson> json = ParsePyJson(json_array, "test");
  EXPECT_TRUE(json.ok()) << json.status();
  absl::StatusOr<std::vector<Message>> messages = MessagesFromJson(*json, "messages");
  EXPECT_TRUE(messages.ok()) << messages.status();
  return messages.ok() ? *messages : std::vector<Message>{};
}

constexpr char kPrompt[] =
    R"([{"role": "system", "content": "Be brief.", "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]}, {"role": "user", "content": "Compute 2+2"}])";

const std::string kCompletion =
    "Use calc.</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"calc\">\n"
    "<｜DSML｜parameter name=\"expr\" string=\"true\">2+2</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" +
    std::string(kEosToken);

std::vector<int32_t> EncodeAll(const Tokenizer& tok, const std::vector<Message>& messages,
                               const EncodeOptions& options) {
  absl::StatusOr<std::string> text = EncodeMessages(messages, options);
  EXPECT_TRUE(text.ok()) << text.status();
  return tok.Encode(*text);
}

TEST(TokenConversation, ExtendsWithSampledIdsAndToolResults) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  const EncodeOptions options{.thinking_mode = ThinkingMode::kThinking};
  absl::StatusOr<TokenConversation> conv =
      TokenConversation::Start(tok, Messages(kPrompt), options);
  ASSERT_TRUE(conv.ok()) << conv.status();
  EXPECT_EQ(conv->ids(), EncodeAll(*tok, Messages(kPrompt), options));
  EXPECT_EQ(conv->ids().front(), 0);
  EXPECT_EQ(conv->ids().back(), 128821);  // <think>

  absl::StatusOr<Message> parsed = ParseCompletion(kCompletion, ThinkingMode::kThinking);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  parsed->tool_calls[0].id = "c1";
  V4RL_ASSERT_OK(conv->AppendCompletion(tok->Encode(kCompletion), *parsed));
  V4RL_ASSERT_OK(conv->AppendMessages(
      Messages(R"([{"role": "tool", "tool_call_id": "c1", "content": "4"}])")));
  EXPECT_EQ(conv->ids(), EncodeAll(*tok, conv->messages(), options));

  // Second round: an answer, then a new user question.
  const std::string answer = "Got 4.</think>2+2 = 4." + std::string(kEosToken);
  V4RL_ASSERT_OK(conv->AppendCompletion(tok->Encode(answer),
                                        *ParseCompletion(answer, ThinkingMode::kThinking)));
  V4RL_ASSERT_OK(conv->AppendMessages(Messages(R"([{"role": "user", "content": "And 3+3?"}])")));
  EXPECT_EQ(conv->ids(), EncodeAll(*tok, conv->messages(), options));
  EXPECT_EQ(conv->messages().size(), 6u);
}

TEST(TokenConversation, KeepsNonCanonicalSampledIds) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  const EncodeOptions options{.thinking_mode = ThinkingMode::kChat};
  absl::StatusOr<TokenConversation> conv = TokenConversation::Start(
      tok, Messages(R"([{"role": "user", "content": "Say hi"}])"), options);
  ASSERT_TRUE(conv.ok()) << conv.status();
  const size_t prompt_size = conv->ids().size();
  // "hi" sampled as two byte tokens rather than the canonical single token.
  const std::vector<int32_t> sampled = {*tok->TokenToId("h"), *tok->TokenToId("i"), 1};
  Message message;
  message.role = Role::kAssistant;
  message.content = "hi";
  V4RL_ASSERT_OK(conv->AppendCompletion(sampled, message));
  V4RL_ASSERT_OK(conv->AppendMessages(Messages(R"([{"role": "user", "content": "Again"}])")));
  EXPECT_EQ(std::vector<int32_t>(conv->ids().begin() + prompt_size,
                                 conv->ids().begin() + prompt_size + 3),
            sampled);
  EXPECT_EQ(*tok->Decode(conv->ids()), *EncodeMessages(conv->messages(), options));
}

TEST(TokenConversation, RefusesWhatWouldNotExtend) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  const EncodeOptions thinking{.thinking_mode = ThinkingMode::kThinking};
  absl::StatusOr<TokenConversation> conv =
      TokenConversation::Start(tok, Messages(R"([{"role": "user", "content": "Hi"}])"), thinking);
  ASSERT_TRUE(conv.ok()) << conv.status();
  EXPECT_THAT(conv->AppendMessages(Messages(R"([{"role": "user", "content": "more"}])")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("end with a completion")));
  Message answer;
  answer.role = Role::kAssistant;
  answer.content = "Hello";
  EXPECT_THAT(conv->AppendCompletion(tok->Encode("r</think>Hello"), answer),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not end with")));
  EXPECT_THAT(conv->AppendCompletion(std::vector<int32_t>{5, 999999, 1}, answer),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("completion_ids[1]")));
  Message user;
  EXPECT_THAT(conv->AppendCompletion(std::vector<int32_t>{1}, user),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("assistant")));
  V4RL_ASSERT_OK(
      conv->AppendCompletion(tok->Encode("r</think>Hello<｜end▁of▁sentence｜>"), answer));
  EXPECT_THAT(conv->AppendCompletion(std::vector<int32_t>{1}, answer),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("already ends")));
  // Without tools, thinking mode would drop the reasoning just sampled.
  EXPECT_THAT(conv->AppendMessages(Messages(R"([{"role": "user", "content": "more"}])")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("drop_thinking=false")));
}

}  // namespace
}  // namespace v4rl::actor
