// The fixed prompt texts pinned byte for byte: against DeepSeek's constants.json and the lengths
// and SHA-256 digests of spec/chat-encoding.md §2.5, §2.6, §3.2; the copied fixtures against §9.
#include "actor/chat_prompts.h"

#include <string>

#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/actor/actor_test_util.h"

namespace v4rl::actor {
namespace {

using testing::Sha256Hex;

TEST(ChatPrompts, MatchDeepSeekConstants) {
  const nlohmann::json constants =
      nlohmann::json::parse(testing::ReadTestData("dsv4_fixtures/constants.json"));
  const std::string tools = absl::StrReplaceAll(constants["TOOLS_TEMPLATE"].get<std::string>(),
                                                {{"{dsml_token}", "｜DSML｜"},
                                                 {"{thinking_start_token}", "<think>"},
                                                 {"{thinking_end_token}", "</think>"}});
  const size_t schemas = tools.find("{tool_schemas}");
  ASSERT_NE(schemas, std::string::npos);
  EXPECT_EQ(tools.substr(0, schemas), kToolsPrefix);
  EXPECT_EQ(tools.substr(schemas + 14), kToolsSuffix);
  EXPECT_EQ(constants["REASONING_EFFORT_MAX"].get<std::string>(), kReasoningEffortMax);
}

TEST(ChatPrompts, MatchSpecDigests) {
  EXPECT_EQ(kToolsPrefix.size(), 890u);
  EXPECT_EQ(Sha256Hex(kToolsPrefix),
            "c7c9042638154a237b5d1bd48be772374a35a4d24c5cacfd1ffbd92703da329c");
  EXPECT_EQ(kToolsSuffix.size(), 99u);
  EXPECT_EQ(Sha256Hex(kToolsSuffix),
            "690702850fe256512cb1ee67c4e436ecb3e735c71ebee77ca45ff357a75fb5a7");
  EXPECT_EQ(kResponseFormatHeader.size(), 80u);
  EXPECT_EQ(Sha256Hex(kResponseFormatHeader),
            "5200f58413f49f3957c43beddbc97bead023232cb5934fad0c1997c30c139112");
  EXPECT_EQ(kReasoningEffortMax.size(), 476u);
  EXPECT_EQ(Sha256Hex(kReasoningEffortMax),
            "f7a24f3b3050d4a83781e9b755b316aae2ec1d9dc87562541d90bcb04d7350f7");
}

TEST(ChatPrompts, FixturesAreDeepSeeksFiles) {
  const std::pair<const char*, const char*> files[] = {
      {"test_input_1.json", "10e0c074c977c3a80daab758af28219c6b1c2bd7f3f5cf2890c84b361cc32897"},
      {"test_input_2.json", "c44ae0db20fafff38a6021e8068d7ed6e28605d76cafd20be80b03398509f447"},
      {"test_input_3.json", "37bf8ef95e0411ea5f411be0b02fbafec7363438b6ccefddca0c52ec9aeaf69a"},
      {"test_input_4.json", "c45bbd0a1b7a2f75033d8db4ba74ee5b7653bd01114045a52f79d3b387663465"},
      {"test_output_1.txt", "9b366d9d2eac842a6e890594aac0b58648e5623717202b33497afadf03e26540"},
      {"test_output_2.txt", "ca66b01a1ac3a204bb032c928fb607d4877171e998a50f7f89f39fa821b75665"},
      {"test_output_3.txt", "b3b1cd8748b7b90d3c6be6da3f786f12e4d70be073bd445ea162dfad4dc01a64"},
      {"test_output_4.txt", "60e1643840ba9e4aeede450feb7b0498fa66ee24e4a939d48855ce04ec6fc375"},
  };
  for (const auto& [name, digest] : files) {
    EXPECT_EQ(Sha256Hex(testing::ReadTestData(std::string("dsv4_fixtures/") + name)), digest)
        << name;
  }
}

}  // namespace
}  // namespace v4rl::actor
