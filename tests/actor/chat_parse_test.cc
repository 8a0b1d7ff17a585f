// Completion parsing: every row of spec/chat-encoding.md §5.2 (behaviour of DeepSeek's parser),
// DeepSeek's own parse check on fixture 1, and the tolerant mode.
#include "actor/chat_parse.h"

#include <string>

#include "actor/chat_tokens.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/actor/actor_test_util.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::actor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::v4rl::testing::StatusIs;

const std::string kEos(kEosToken);
constexpr ThinkingMode kThinking = ThinkingMode::kThinking;
constexpr ThinkingMode kChat = ThinkingMode::kChat;

std::string Param(const std::string& name, bool is_string, const std::string& value) {
  return "<｜DSML｜parameter name=\"" + name + "\" string=\"" + (is_string ? "true" : "false") +
         "\">" + value + "</｜DSML｜parameter>\n";
}
std::string Invoke(const std::string& name, const std::string& params) {
  return "<｜DSML｜invoke name=\"" + name + "\">\n" + params + "</｜DSML｜invoke>\n";
}
std::string Block(const std::string& invokes) {
  return "\n\n<｜DSML｜tool_calls>\n" + invokes + "</｜DSML｜tool_calls>";
}

TEST(ParseCompletion, WellFormed) {
  absl::StatusOr<Message> m =
      ParseCompletion("Simple arithmetic.</think>2 + 2 = 4." + kEos, kThinking);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->role, Role::kAssistant);
  EXPECT_EQ(m->reasoning_content, "Simple arithmetic.");
  EXPECT_EQ(m->content, "2 + 2 = 4.");
  EXPECT_THAT(m->tool_calls, IsEmpty());

  m = ParseCompletion("Hello there." + kEos, kChat);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->content, "Hello there.");
  EXPECT_EQ(m->reasoning_content, "");

  m = ParseCompletion("</think>x" + kEos, kThinking);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->reasoning_content, "");
  EXPECT_EQ(m->content, "x");
}

TEST(ParseCompletion, ToolCalls) {
  const std::string text =
      "Use calc.</think>Let me compute." +
      Block(Invoke("calc", Param("expr", true, "2+2") + Param("precision", false, "2")) +
            Invoke("note", Param("text", true, "line one\nsaid \"hi\"")) + Invoke("ping", "\n")) +
      kEos;
  absl::StatusOr<Message> m = ParseCompletion(text, kThinking);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->content, "Let me compute.");
  ASSERT_EQ(m->tool_calls.size(), 3u);
  EXPECT_EQ(m->tool_calls[0].name, "calc");
  EXPECT_EQ(m->tool_calls[0].arguments, R"({"expr": "2+2", "precision": 2})");
  // Multi-line string values with quotes come back JSON-escaped.
  EXPECT_EQ(m->tool_calls[1].arguments, R"({"text": "line one\nsaid \"hi\""})");
  // An invoke without parameters (one empty line) gives "{}".
  EXPECT_EQ(m->tool_calls[2].name, "ping");
  EXPECT_EQ(m->tool_calls[2].arguments, "{}");
}

TEST(ParseCompletion, AcceptsWhatTheOfficialParserAccepts) {
  // string="false" values are pasted verbatim, even when not JSON.
  absl::StatusOr<Message> m = ParseCompletion(
      "r</think>" + Block(Invoke("calc", Param("precision", false, "two"))) + kEos, kThinking);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tool_calls[0].arguments, R"({"precision": two})");
  // A block cut off after a complete parameter line: the call is kept, EOS may be missing.
  m = ParseCompletion("r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"calc\">\n" +
                          Param("expr", true, "1+1"),
                      kThinking);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->tool_calls.size(), 1u);
  EXPECT_EQ(m->tool_calls[0].arguments, R"({"expr": "1+1"})");
  // A block without EOS after its end tag.
  m = ParseCompletion("r</think>" + Block(Invoke("f", Param("a", true, "b"))), kThinking);
  ASSERT_TRUE(m.ok()) << m.status();
}

TEST(ParseCompletion, RejectsMalformedOutput) {
  EXPECT_THAT(ParseCompletion("I am still thinking", kThinking),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing </think>")));
  EXPECT_THAT(
      ParseCompletion("r</think>answer", kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing <｜end▁of▁sentence｜>")));
  EXPECT_THAT(
      ParseCompletion("thinking" + Block(Invoke("f", Param("a", true, "b"))) + kEos, kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing </think>")));
  EXPECT_THAT(
      ParseCompletion("r</think>text\n<｜DSML｜tool_calls>\n" + Invoke("f", Param("a", true, "b")) +
                          "</｜DSML｜tool_calls>" + kEos,
                      kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("｜DSML｜ inside content")));
  EXPECT_THAT(
      ParseCompletion("r</think>" + Block(Invoke("f", Param("a", true, "b"))) + "oops" + kEos,
                      kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("after the tool-call block")));
  EXPECT_THAT(
      ParseCompletion(
          "r</think>" + Block(Invoke("f", Param("a", true, "1") + Param("a", true, "2"))) + kEos,
          kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate parameter \"a\"")));
  EXPECT_THAT(ParseCompletion("x</think>y" + kEos, kChat),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("</think> inside content")));
  EXPECT_THAT(ParseCompletion("x" + kEos + "more", kChat),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("text after")));
  EXPECT_THAT(ParseCompletion("r<think></think>y" + kEos, kThinking),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("<think> inside reasoning")));
  EXPECT_THAT(
      ParseCompletion("r</think>" + Block("<｜DSML｜invoke nam=\"f\">\n</｜DSML｜invoke>\n") + kEos,
                      kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("malformed invoke head")));
  EXPECT_THAT(
      ParseCompletion(
          "r</think>" +
              Block(Invoke("f", "<｜DSML｜parameter name=\"a\">b</｜DSML｜parameter>\n")) + kEos,
          kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("malformed parameter")));
  EXPECT_THAT(ParseCompletion("r</think>\n\n<｜DSML｜tool_calls>\n" + Invoke("f", "\n"), kThinking),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ends without")));
  EXPECT_THAT(
      ParseCompletion("r</think>\n\n<｜DSML｜tool_calls> \n" + Invoke("f", "\n"), kThinking),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected \">\\n\"")));
}

TEST(ParseCompletion, ParsesTheAssistantSpansOfFixture1) {
  const std::string prompt = testing::ReadTestData("dsv4_fixtures/test_output_1.txt");
  // Each assistant span runs from after "<｜Assistant｜><think>" through its EOS.
  const std::string opener = "<｜Assistant｜><think>";
  const size_t first = prompt.find(opener) + opener.size();
  const size_t first_end = prompt.find(kEos, first) + kEos.size();
  absl::StatusOr<Message> call =
      ParseCompletion(prompt.substr(first, first_end - first), kThinking);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->reasoning_content,
            "The user wants to know the weather in Beijing. I should use the get_weather tool.");
  EXPECT_EQ(call->content, "");
  ASSERT_EQ(call->tool_calls.size(), 1u);
  EXPECT_EQ(call->tool_calls[0].name, "get_weather");
  EXPECT_EQ(call->tool_calls[0].arguments, R"({"location": "Beijing", "unit": "celsius"})");

  const size_t last = prompt.rfind(opener) + opener.size();
  absl::StatusOr<Message> answer = ParseCompletion(prompt.substr(last), kThinking);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->reasoning_content, "Got the weather data. Let me format a nice response.");
  EXPECT_EQ(
      answer->content,
      "The weather in Beijing is currently sunny with a temperature of 22°C and 45% humidity.");
}

TEST(ParseCompletionTolerant, WellFormedTextHasNoProblems) {
  const std::string text =
      "r</think>c" + Block(Invoke("f", Param("a", true, "b") + Param("n", false, "1"))) + kEos;
  TolerantParse parsed = ParseCompletionTolerant(text, kThinking);
  EXPECT_THAT(parsed.problems, IsEmpty());
  absl::StatusOr<Message> strict = ParseCompletion(text, kThinking);
  ASSERT_TRUE(strict.ok());
  EXPECT_EQ(parsed.message.reasoning_content, strict->reasoning_content);
  EXPECT_EQ(parsed.message.content, strict->content);
  ASSERT_EQ(parsed.message.tool_calls.size(), 1u);
  EXPECT_EQ(parsed.message.tool_calls[0].arguments, strict->tool_calls[0].arguments);
}

TEST(ParseCompletionTolerant, RecoversAndReports) {
  TolerantParse p = ParseCompletionTolerant("r</think>answer", kThinking);
  EXPECT_EQ(p.message.content, "answer");
  EXPECT_THAT(p.problems, ElementsAre(HasSubstr("missing <｜end▁of▁sentence｜>")));

  // No </think>: everything is reasoning (the R1 rule).
  p = ParseCompletionTolerant("still thinking", kThinking);
  EXPECT_EQ(p.message.reasoning_content, "still thinking");
  EXPECT_EQ(p.message.content, "");
  EXPECT_EQ(p.problems.size(), 2u);

  // A tool block inside unterminated reasoning is still parsed.
  p = ParseCompletionTolerant("<think>plan" + Block(Invoke("f", Param("a", true, "b"))) + kEos,
                              kThinking);
  EXPECT_EQ(p.message.reasoning_content, "plan");
  ASSERT_EQ(p.message.tool_calls.size(), 1u);
  EXPECT_EQ(p.message.tool_calls[0].arguments, R"({"a": "b"})");
  EXPECT_THAT(p.problems, ElementsAre(HasSubstr("leading <think>"), HasSubstr("missing </think>")));

  // A malformed call is dropped alone; trailing text and text after EOS are dropped.
  p = ParseCompletionTolerant(
      "r</think>" +
          Block(Invoke("good", Param("a", true, "1")) +
                Invoke("bad", Param("x", true, "1") + Param("x", true, "2")) +
                Invoke("also_good", "\n")) +
          "junk" + kEos + "after",
      kThinking);
  ASSERT_EQ(p.message.tool_calls.size(), 2u);
  EXPECT_EQ(p.message.tool_calls[0].name, "good");
  EXPECT_EQ(p.message.tool_calls[1].name, "also_good");
  EXPECT_THAT(p.problems, ElementsAre(HasSubstr("tool call 2 dropped: "),
                                      HasSubstr("after the tool-call block"),
                                      HasSubstr("after <｜end▁of▁sentence｜>")));

  // An unclosed invoke followed by another, and a block cut off by EOS.
  p = ParseCompletionTolerant("r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"a\">\n" +
                                  Param("k", true, "v") + Invoke("b", "\n") + kEos,
                              kThinking);
  ASSERT_EQ(p.message.tool_calls.size(), 2u);
  EXPECT_EQ(p.message.tool_calls[0].arguments, R"({"k": "v"})");
  EXPECT_FALSE(p.problems.empty());

  // Stray markers are removed from content.
  p = ParseCompletionTolerant("thought</think>answer" + kEos, kChat);
  EXPECT_EQ(p.message.content, "thoughtanswer");
  EXPECT_THAT(p.problems, ElementsAre(HasSubstr("removed 1 special markers from content")));
}

}  // namespace
}  // namespace v4rl::actor
