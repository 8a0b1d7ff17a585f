// V4RL_RETURN_IF_ERROR / V4RL_ASSIGN_OR_RETURN and the test matchers.
#include "core/status.h"

#include "core/logging.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::core {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  V4RL_ASSIGN_OR_RETURN(int half, Half(x));
  V4RL_ASSIGN_OR_RETURN(half, Half(half));
  return half;
}

absl::Status CheckEven(int x) {
  V4RL_RETURN_IF_ERROR(Half(x));
  return absl::OkStatus();
}

TEST(StatusMacros, PropagateErrorsAndValues) {
  V4RL_ASSERT_OK_AND_ASSIGN(int q, Quarter(8));
  EXPECT_EQ(q, 2);
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("odd")));
  V4RL_EXPECT_OK(CheckEven(4));
  EXPECT_THAT(CheckEven(3), StatusIs(absl::StatusCode::kInvalidArgument, "odd"));
}

TEST(Check, FailureAbortsWithMessage) {
  EXPECT_DEATH({ V4RL_CHECK_EQ(1 + 1, 3) << "arithmetic"; }, "Check failed: 1 \\+ 1 == 3");
}

}  // namespace
}  // namespace v4rl::core
