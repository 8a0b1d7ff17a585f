// gtest helpers for absl::Status / absl::StatusOr.
//
//   V4RL_ASSERT_OK(status_or);                       // prints the error when it fails
//   V4RL_ASSERT_OK_AND_ASSIGN(auto value, MakeIt());
//   EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shape")));
#pragma once

#include <ostream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace v4rl::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER_P2(StatusIs, code, message_matcher,
           "status code " + absl::StatusCodeToString(code) + " with a matching message") {
  const absl::Status& status = ::v4rl::testing::GetStatus(arg);
  *result_listener << "got " << status.ToString();
  return status.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(status.message()),
                                       result_listener);
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = ::v4rl::testing::GetStatus(arg);
  *result_listener << "got " << status.ToString();
  return status.ok();
}

}  // namespace v4rl::testing

#define V4RL_EXPECT_OK(expr) EXPECT_THAT((expr), ::v4rl::testing::IsOk())
#define V4RL_ASSERT_OK(expr) ASSERT_THAT((expr), ::v4rl::testing::IsOk())
#define V4RL_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  V4RL_ASSERT_OK_AND_ASSIGN_IMPL_(V4RL_STATUS_CONCAT_(v4rl_test_status_or_, __LINE__), lhs, expr)
#define V4RL_ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  ASSERT_THAT(tmp, ::v4rl::testing::IsOk());            \
  lhs = std::move(tmp).value()
