// The V4 prompt format against DeepSeek's four official fixtures and the worked examples of
// spec/chat-encoding.md §6 (outputs of DeepSeek's reference encoder).
#include "actor/chat_encoding.h"

#include <string>
#include <vector>

#include "actor/chat_prompts.h"
#include "actor/chat_tokens.h"
#include "actor/message.h"
#include "actor/py_json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/actor/actor_test_util.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::actor {
namespace {

using ::testing::HasSubstr;
using ::v4rl::testing::StatusIs;

constexpr char kS[] = R"({"role": "system", "content": "You are a helpful assistant."})";
constexpr char kU[] = R"({"role": "user", "content": "What is 2+2?"})";
const std::string kBos(kBosToken);
const std::string kEos(kEosToken);

std::vector<Message> Messages(const std::string& json_array) {
  absl::StatusOr<PyJson> json = ParsePyJson(json_array, "test messages");
  EXPECT_TRUE(json.ok()) << json.status();
  if (!json.ok()) return {};
  absl::StatusOr<std::vector<Message>> messages = MessagesFromJson(*json, "messages");
  EXPECT_TRUE(messages.ok()) << messages.status();
  return messages.ok() ? *messages : std::vector<Message>{};
}

EncodeOptions Thinking(ReasoningEffort effort = ReasoningEffort::kNone, bool drop = true) {
  return {
      .thinking_mode = ThinkingMode::kThinking, .reasoning_effort = effort, .drop_thinking = drop};
}
EncodeOptions Chat(ReasoningEffort effort = ReasoningEffort::kNone) {
  return {.thinking_mode = ThinkingMode::kChat, .reasoning_effort = effort};
}

std::string Encode(const std::string& json_array, const EncodeOptions& options,
                   const std::string& context_array = "[]") {
  absl::StatusOr<std::string> prompt =
      EncodeMessages(Messages(json_array), options, Messages(context_array));
  EXPECT_TRUE(prompt.ok()) << prompt.status();
  return prompt.ok() ? *prompt : "";
}

std::string Join(std::initializer_list<std::string> parts) {
  std::string out;
  for (const std::string& part : parts) out += part;
  return out;
}

// --- DeepSeek's fixtures -------------------------------------------------------------------------

std::string EncodeFixture(int number, ThinkingMode mode) {
  const std::string input =
      testing::ReadTestData("dsv4_fixtures/test_input_" + std::to_string(number) + ".json");
  absl::StatusOr<PyJson> json = ParsePyJson(input, "fixture");
  EXPECT_TRUE(json.ok()) << json.status();
  PyJson messages = *json;
  // Test 1 keeps its tools beside the messages; DeepSeek's test attaches them to messages[0].
  if (json->is_object()) {
    messages = (*json)["messages"];
    messages[0]["tools"] = (*json)["tools"];
  }
  absl::StatusOr<std::vector<Message>> parsed = MessagesFromJson(messages, "messages");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  absl::StatusOr<std::string> prompt = EncodeMessages(*parsed, {.thinking_mode = mode});
  EXPECT_TRUE(prompt.ok()) << prompt.status();
  return prompt.ok() ? *prompt : "";
}

TEST(Fixtures, ReproduceDeepSeekOutputsByteForByte) {
  for (int i = 1; i <= 4; ++i) {
    const ThinkingMode mode = i == 4 ? ThinkingMode::kChat : ThinkingMode::kThinking;
    EXPECT_EQ(EncodeFixture(i, mode),
              testing::ReadTestData("dsv4_fixtures/test_output_" + std::to_string(i) + ".txt"))
        << "fixture " << i;
  }
}

// --- Modes (spec §3, examples A-C)
// ------------------------------------------------------------------

TEST(Modes, ChatThinkHighAndThinkMax) {
  const std::string messages = Join({"[", kS, ",", kU, "]"});
  const std::string body = "You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜>";
  EXPECT_EQ(Encode(messages, Chat()), kBos + body + "</think>");
  EXPECT_EQ(Encode(messages, Thinking()), kBos + body + "<think>");
  EXPECT_EQ(Encode(messages, Thinking(ReasoningEffort::kHigh)), kBos + body + "<think>");
  EXPECT_EQ(Encode(messages, Thinking(ReasoningEffort::kMax)),
            kBos + std::string(kReasoningEffortMax) + body + "<think>");
  // Chat mode ignores the effort.
  EXPECT_EQ(Encode(messages, Chat(ReasoningEffort::kMax)), kBos + body + "</think>");
  // The spec pins example C by length and digest.
  const std::string think_max = Encode(messages, Thinking(ReasoningEffort::kMax));
  EXPECT_EQ(think_max.size(), 581u);
  EXPECT_EQ(testing::Sha256Hex(think_max).substr(0, 16), "b12d040383ed0807");
  EXPECT_EQ(Encode(R"([{"role": "user", "content": "Hi"}])", Thinking(ReasoningEffort::kMax)),
            kBos + std::string(kReasoningEffortMax) + "<｜User｜>Hi<｜Assistant｜><think>");
}

// --- Dropping earlier reasoning (spec §4, examples E, F, G, N, H3)
// --------------------------------

constexpr char kHistory[] =
    R"({"role": "user", "content": "Hello"}, {"role": "assistant", "reasoning_content": "Greet back.", "content": "Hi! How can I help?"})";

TEST(DropThinking, EarlierReasoningIsDroppedOnlyInThinkingModeWithoutTools) {
  const std::string messages = Join({"[", kS, ",", kHistory, ",", kU, "]"});
  const std::string head = kBos + "You are a helpful assistant.<｜User｜>Hello<｜Assistant｜>";
  const std::string tail = "Hi! How can I help?" + kEos + "<｜User｜>What is 2+2?<｜Assistant｜>";
  EXPECT_EQ(Encode(messages, Thinking()), head + "</think>" + tail + "<think>");  // E
  EXPECT_EQ(Encode(messages, Thinking(ReasoningEffort::kNone, /*drop=*/false)),
            head + "<think>Greet back.</think>" + tail + "<think>");           // F
  EXPECT_EQ(Encode(messages, Chat()), head + "</think>" + tail + "</think>");  // G
  // N: a training sample ending with the assistant keeps its own reasoning.
  const std::string sample =
      Join({"[", kS, ",", kHistory, ",", kU,
            R"(, {"role": "assistant", "reasoning_content": "2+2=4.", "content": "4"}])"});
  EXPECT_EQ(Encode(sample, Thinking()), head + "</think>" + tail + "<think>2+2=4.</think>4" + kEos);
}

TEST(DropThinking, DeveloperTurnsBeforeTheLastUserAreDeleted) {
  const std::string messages = Join({"[", kS, R"(, {"role": "developer", "content": "D"},
        {"role": "assistant", "reasoning_content": "r", "content": "a"}, )",
                                     kU, "]"});
  EXPECT_EQ(Encode(messages, Thinking()), kBos + "You are a helpful assistant.a" + kEos +
                                              "<｜User｜>What is 2+2?<｜Assistant｜><think>");
  EXPECT_EQ(Encode(messages, Thinking(ReasoningEffort::kNone, /*drop=*/false)),
            kBos + "You are a helpful assistant.<｜User｜>D<｜Assistant｜><think>r</think>a" +
                kEos + "<｜User｜>What is 2+2?<｜Assistant｜><think>");
}

TEST(DropThinking, AnyToolsKeepAllReasoning) {
  std::vector<Message> messages = Messages(Join({"[", kS, ",", kHistory, ",", kU, "]"}));
  EXPECT_TRUE(EffectiveDropThinking(messages, {}, Thinking()));
  EXPECT_FALSE(EffectiveDropThinking(messages, {}, Thinking(ReasoningEffort::kNone, false)));
  // Tools on a user message are discarded by the merge step, so they do not count.
  messages[1].tools.push_back(PyJson{{"name", "f"}});
  EXPECT_TRUE(EffectiveDropThinking(messages, {}, Thinking()));
  messages[2].tools.push_back(PyJson{{"name", "f"}});
  EXPECT_FALSE(EffectiveDropThinking(messages, {}, Thinking()));
  EXPECT_FALSE(EffectiveDropThinking({}, messages, Thinking()));
}

// --- Tools and DSML (examples H, H3, I, J, L, O, P)
// ------------------------------------------------

constexpr char kCalcTools[] =
    R"([{"type": "function", "function": {"name": "calc", "description": "Evaluate", "parameters": {"type": "object", "properties": {"expr": {"type": "string"}, "precision": {"type": "integer"}, "exact": {"type": "boolean"}, "vars": {"type": "object"}, "tags": {"type": "array"}}, "required": ["expr"]}}}])";

std::string SystemWithTools() {
  return std::string(R"({"role": "system", "content": "You are a helpful assistant.", "tools": )") +
         kCalcTools + "}";
}

std::string ToolsHead() {
  return kBos + "You are a helpful assistant.\n\n" + std::string(kToolsPrefix) +
         R"({"name": "calc", "description": "Evaluate", "parameters": {"type": "object", "properties": {"expr": {"type": "string"}, "precision": {"type": "integer"}, "exact": {"type": "boolean"}, "vars": {"type": "object"}, "tags": {"type": "array"}}, "required": ["expr"]}})" +
         std::string(kToolsSuffix);
}

constexpr char kCallTurn[] =
    R"({"role": "user", "content": "Compute 2+2"}, {"role": "assistant", "reasoning_content": "Use calc.", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{\"expr\": \"2+2\", \"precision\": 2, \"exact\": true, \"vars\": {\"x\": 1}, \"tags\": [\"a\", \"b\"], \"note\": null}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "4"})";

const std::string kCallDsml =
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"calc\">\n"
    "<｜DSML｜parameter name=\"expr\" string=\"true\">2+2</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"precision\" string=\"false\">2</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"exact\" string=\"false\">true</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"vars\" string=\"false\">{\"x\": 1}</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"tags\" string=\"false\">[\"a\", \"b\"]</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"note\" string=\"false\">null</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

TEST(Tools, ToolCallAndResult) {
  const std::string messages = Join({"[", SystemWithTools(), ",", kCallTurn, "]"});
  const std::string thinking = Encode(messages, Thinking());
  EXPECT_EQ(thinking, ToolsHead() + "<｜User｜>Compute 2+2<｜Assistant｜><think>Use calc.</think>" +
                          kCallDsml + kEos + "<｜User｜><tool_result>4</tool_result>" +
                          "<｜Assistant｜><think>");  // H
  EXPECT_EQ(thinking.size(), 2025u);
  EXPECT_EQ(testing::Sha256Hex(thinking).substr(0, 16), "8886db7abca9c166");
  EXPECT_EQ(Encode(messages, Chat()),
            ToolsHead() + "<｜User｜>Compute 2+2<｜Assistant｜></think>" + kCallDsml + kEos +
                "<｜User｜><tool_result>4</tool_result><｜Assistant｜></think>");
  // H3: the next user turn keeps the tool turn's reasoning, since tools are attached.
  const std::string next =
      Join({"[", SystemWithTools(), ",", kCallTurn,
            R"(, {"role": "assistant", "reasoning_content": "Got 4.", "content": "2+2 = 4."},
          {"role": "user", "content": "Thanks. And 3+3?"}])"});
  EXPECT_EQ(Encode(next, Thinking()),
            ToolsHead() + "<｜User｜>Compute 2+2<｜Assistant｜><think>Use calc.</think>" +
                kCallDsml + kEos +
                "<｜User｜><tool_result>4</tool_result><｜Assistant｜><think>Got 4.</think>" +
                "2+2 = 4." + kEos + "<｜User｜>Thanks. And 3+3?<｜Assistant｜><think>");
}

TEST(Tools, WithoutAttachedToolsTheCallingTurnLosesItsReasoning) {
  // spec §4.3: a tool-result turn counts as a user turn, so drop stays on.
  const std::string messages = Join({"[", kS, ",", kCallTurn, "]"});
  EXPECT_EQ(Encode(messages, Thinking()),
            kBos + "You are a helpful assistant.<｜User｜>Compute 2+2<｜Assistant｜></think>" +
                kCallDsml + kEos + "<｜User｜><tool_result>4</tool_result><｜Assistant｜><think>");
}

constexpr char kTwoCalls[] =
    R"({"role": "user", "content": "Two calcs"}, {"role": "assistant", "reasoning_content": "Two calls.", "content": "Let me compute.", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "calc", "arguments": "{\"expr\": \"1+1\"}"}}, {"id": "b", "type": "function", "function": {"name": "calc", "arguments": "{\"expr\": \"2+2\"}"}}]})";

const std::string kTwoCallsTail =
    "<｜User｜>Two calcs<｜Assistant｜><think>Two calls.</think>Let me compute.\n\n"
    "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"calc\">\n"
    "<｜DSML｜parameter name=\"expr\" string=\"true\">1+1</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"calc\">\n"
    "<｜DSML｜parameter name=\"expr\" string=\"true\">2+2</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" +
    std::string(kEosToken);

TEST(Tools, ResultsAreMergedAndOrderedByCallId) {
  const std::string messages = Join({"[", SystemWithTools(), ",", kTwoCalls,
                                     R"(, {"role": "tool", "tool_call_id": "b", "content": "4"},
          {"role": "tool", "tool_call_id": "a", "content": "2"}])"});
  EXPECT_EQ(Encode(messages, Thinking()),
            ToolsHead() + kTwoCallsTail +
                "<｜User｜><tool_result>2</tool_result>\n\n<tool_result>4</tool_result>"
                "<｜Assistant｜><think>");  // I
  // P: a user message right after the results joins their turn.
  const std::string with_user = Join(
      {"[", SystemWithTools(), ",", kCallTurn, R"(, {"role": "user", "content": "also this"}])"});
  EXPECT_THAT(Encode(with_user, Thinking()),
              ::testing::EndsWith(
                  "<｜User｜><tool_result>4</tool_result>\n\nalso this<｜Assistant｜><think>"));
  // Unknown ids sort as position 0 (stable), content lists are joined.
  const std::string unknown = Join({"[", SystemWithTools(), ",", kTwoCalls,
                                    R"(, {"role": "tool", "tool_call_id": "b", "content": "4"},
          {"role": "tool", "tool_call_id": "zz", "content": [{"type": "text", "text": "x"}, {"type": "image_url"}]}])"});
  EXPECT_THAT(
      Encode(unknown, Thinking()),
      ::testing::EndsWith("<｜User｜><tool_result>x\n\n[Unsupported image_url]</tool_result>"
                          "\n\n<tool_result>4</tool_result><｜Assistant｜><think>"));
}

TEST(Tools, ToolsOnASystemMessageWithoutContent) {
  const std::string messages = std::string(R"([{"role": "system", "tools": )") + kCalcTools +
                               R"(}, {"role": "user", "content": "Hi"}])";
  EXPECT_EQ(Encode(messages, Thinking()),
            ToolsHead().replace(kBos.size(), 28, "") + "<｜User｜>Hi<｜Assistant｜><think>");  // J
}

TEST(Tools, ResponseFormat) {
  const std::string messages =
      std::string(
          R"([{"role": "system", "content": "You are a helpful assistant.", "response_format": {"type": "json_object"}}, )") +
      kU + "]";
  EXPECT_EQ(Encode(messages, Chat()),
            kBos + "You are a helpful assistant.\n\n" + std::string(kResponseFormatHeader) +
                "{\"type\": \"json_object\"}<｜User｜>What is 2+2?<｜Assistant｜></think>");  // L
  // An empty response_format is falsy and not rendered.
  const std::string empty =
      std::string(R"([{"role": "system", "content": "S", "response_format": {}}, )") + kU + "]";
  EXPECT_EQ(Encode(empty, Chat()), kBos + "S<｜User｜>What is 2+2?<｜Assistant｜></think>");
}

std::string CallWithArguments(const std::string& arguments_json) {
  const std::string messages =
      R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": )" +
      arguments_json + "}}]}]";
  const std::string prompt = Encode(messages, Chat());
  const size_t start = prompt.find("<｜DSML｜invoke");
  const size_t end = prompt.find("</｜DSML｜tool_calls>");
  return start == std::string::npos ? prompt : prompt.substr(start, end - start - 1);
}

TEST(Tools, ArgumentEncoding) {
  // O: arguments that are not JSON become one raw string parameter.
  EXPECT_EQ(
      CallWithArguments(R"("not json")"),
      "<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"arguments\" string=\"true\">not "
      "json</｜DSML｜parameter>\n</｜DSML｜invoke>");
  // Empty arguments: an empty line.
  EXPECT_EQ(CallWithArguments(R"("{}")"), "<｜DSML｜invoke name=\"f\">\n\n</｜DSML｜invoke>");
  // String values are written raw; numbers as Python writes them.
  EXPECT_EQ(
      CallWithArguments(
          R"("{\"s\": \"a\\\"b\\nc\", \"x\": 1.50, \"big\": 123456789012345678901234567890, \"e\": 1e20}")"),
      "<｜DSML｜invoke name=\"f\">\n"
      "<｜DSML｜parameter name=\"s\" string=\"true\">a\"b\nc</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"x\" string=\"false\">1.5</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"big\" string=\"false\">123456789012345678901234567890"
      "</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"e\" string=\"false\">1e+20</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>");
  // The official encoder's pitfall: arguments given as an object are wrapped whole.
  EXPECT_EQ(CallWithArguments(R"({"x": 1})"),
            "<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"arguments\" "
            "string=\"false\">{\"x\": 1}</｜DSML｜parameter>\n</｜DSML｜invoke>");
  // JSON that is not an object crashes the official encoder; here it is an error.
  EXPECT_THAT(
      EncodeMessages(
          Messages(
              R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1, 2]"}}]}])"),
          Chat()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("arguments must be a JSON object, got array")));
}

// --- Roles, tasks and merging
// ---------------------------------------------------------------------

TEST(Roles, LatestReminderAfterAUserGetsTheSuffixFirst) {
  EXPECT_EQ(
      Encode(Join({"[", kU, R"(, {"role": "latest_reminder", "content": "R"}])"}), Thinking()),
      kBos + "<｜User｜>What is 2+2?<｜Assistant｜><think><｜latest_reminder｜>R");
}

TEST(Roles, ConsecutiveUserMessagesMergeUnlessTheFirstHasATask) {
  EXPECT_EQ(
      Encode(R"([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])", Chat()),
      kBos + "<｜User｜>a\n\nb<｜Assistant｜></think>");
  EXPECT_EQ(
      Encode(
          R"([{"role": "user", "content": "a", "task": "query"}, {"role": "user", "content": "b"}])",
          Chat()),
      kBos + "<｜User｜>a<｜User｜>b<｜Assistant｜></think>");
}

TEST(Roles, QuickInstructionTasks) {
  EXPECT_EQ(Encode(R"([{"role": "user", "content": "q", "task": "action"}])", Thinking()),
            kBos + "<｜User｜>q<｜Assistant｜><think><｜action｜>");
  EXPECT_EQ(Encode(R"([{"role": "user", "content": "q", "task": "action"}])", Chat()),
            kBos + "<｜User｜>q<｜Assistant｜></think><｜action｜>");
  EXPECT_EQ(Encode(R"([{"role": "user", "content": "q", "task": "query"}])", Thinking()),
            kBos + "<｜User｜>q<｜query｜>");
  for (const char* task : {"authority", "domain", "read_url"}) {
    EXPECT_EQ(Encode(std::string(R"([{"role": "user", "content": "q", "task": ")") + task + "\"}]",
                     Chat()),
              kBos + "<｜User｜>q<｜" + task + "｜>");
  }
  // The turn after a task has no think part; a title task follows the assistant's EOS.
  EXPECT_EQ(Encode(R"([{"role": "user", "content": "q", "task": "action"},
                      {"role": "assistant", "reasoning_content": "r", "content": "Search", "task": "title"}])",
                   Thinking()),
            kBos + "<｜User｜>q<｜Assistant｜><think><｜action｜>Search" + kEos + "<｜title｜>");
}

TEST(Roles, AssistantWithoutEos) {
  EXPECT_EQ(
      Encode(
          R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "partial", "wo_eos": true}])",
          Chat()),
      kBos + "<｜User｜>q<｜Assistant｜></think>partial");
}

// --- Incremental encoding (spec §4.3)
// --------------------------------------------------------------

TEST(Incremental, ContextIsNotRepeatedAndPromptsExtend) {
  const std::string context = Join(
      {"[", SystemWithTools(),
       R"(, {"role": "user", "content": "Compute 2+2"}, {"role": "assistant", "reasoning_content": "Use calc.", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{\"expr\": \"2+2\"}"}}]}])"});
  const std::string result = R"([{"role": "tool", "tool_call_id": "c1", "content": "1"}])";
  const std::string added = Encode(result, Thinking(), context);
  EXPECT_EQ(added, "<｜User｜><tool_result>1</tool_result><｜Assistant｜><think>");
  // With tools attached, the full prompt is the context's text plus the new part.
  std::vector<Message> all = Messages(context);
  for (Message& m : Messages(result)) all.push_back(m);
  absl::StatusOr<std::string> full = EncodeMessages(all, Thinking());
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(*full, Encode(context, Thinking()) + added);
  // Results answering calls made in the context are ordered by them.
  EXPECT_EQ(Encode(R"([{"role": "tool", "tool_call_id": "b", "content": "4"},
                       {"role": "tool", "tool_call_id": "a", "content": "2"}])",
                   Thinking(), Join({"[", SystemWithTools(), ",", kTwoCalls, "]"})),
            "<｜User｜><tool_result>2</tool_result>\n\n<tool_result>4</tool_result>"
            "<｜Assistant｜><think>");
}

// --- Message validation
// ----------------------------------------------------------------------------

absl::Status ParseError(const std::string& json_array) {
  absl::StatusOr<PyJson> json = ParsePyJson(json_array, "test");
  EXPECT_TRUE(json.ok());
  return MessagesFromJson(*json, "messages").status();
}

TEST(Messages, RejectWhatTheReferenceCannotEncode) {
  EXPECT_THAT(ParseError(R"([{"role": "robot", "content": "x"}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("messages[0].role")));
  EXPECT_THAT(ParseError(R"([{"role": "user", "content": null}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("messages[0].content")));
  EXPECT_THAT(ParseError(R"([{"role": "developer", "content": ""}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("developer message needs")));
  EXPECT_THAT(ParseError(R"([{"role": "latest_reminder"}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("latest_reminder")));
  EXPECT_THAT(ParseError(R"([{"role": "user", "content": "x", "task": "dance"}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("messages[0].task")));
  EXPECT_THAT(ParseError(R"([{"role": "system", "tools": {"a": 1}}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("messages[0].tools")));
  EXPECT_THAT(ParseError(R"([{"role": "system", "tools": [{"type": "function"}]}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tools[0]")));
  EXPECT_THAT(
      ParseError(
          R"([{"role": "user"}, {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}])"),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("messages[1].tool_calls[0].function.name")));
  EXPECT_THAT(ParseError(R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("function.arguments")));
  EXPECT_THAT(ParseError(R"([{"role": "tool", "content": 5}])"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("messages[0].content")));
  EXPECT_THAT(ParseError(R"({"role": "user"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected an array")));
}

}  // namespace
}  // namespace v4rl::actor
