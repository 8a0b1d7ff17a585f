// ParseJson limits and typed field errors; WriteFileAtomic round trip.
#include "core/json.h"

#include <unistd.h>

#include "core/file.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::core {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

TEST(Json, ParsesAndReportsTypedFieldErrors) {
  V4RL_ASSERT_OK_AND_ASSIGN(auto json, ParseJson(R"({"a": 3, "b": "x", "c": 2.0})", "test"));
  EXPECT_EQ(*JsonInt(json, "a", "cfg"), 3);
  EXPECT_EQ(*JsonInt(json, "c", "cfg"), 2);
  EXPECT_THAT(JsonInt(json, "b", "cfg"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("cfg: field 'b' must be an integer, got string")));
  EXPECT_THAT(JsonString(json, "missing", "cfg"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing field 'missing'")));
}

TEST(Json, RejectsMalformedDeepAndOversize) {
  EXPECT_THAT(ParseJson("{\"a\": ", "x.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.json: malformed JSON")));
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  EXPECT_THAT(ParseJson(deep, "deep"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("deeper than 64")));
  EXPECT_TRUE(ParseJson(std::string(10, '[') + std::string(10, ']'), "ok").ok());
  EXPECT_THAT(ParseJson("[1,2,3]", "big", {.max_bytes = 3}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exceed")));
}

TEST(File, AtomicWriteThenRead) {
  const std::string path = ::testing::TempDir() + "/v4rl_file_test.txt";
  V4RL_ASSERT_OK(WriteFileAtomic(path, "hello"));
  V4RL_ASSERT_OK(WriteFileAtomic(path, "world!"));
  V4RL_ASSERT_OK_AND_ASSIGN(std::string text, ReadFile(path));
  EXPECT_EQ(text, "world!");
  EXPECT_THAT(ReadFile(path, 3), StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("limit")));
  EXPECT_THAT(ReadFile(path + ".missing"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("cannot open")));
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace v4rl::core
