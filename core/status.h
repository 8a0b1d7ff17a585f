// Status helpers for code that returns absl::Status / absl::StatusOr<T>.
//
// Debian 12's abseil (20220623) has neither ABSL_RETURN_IF_ERROR nor absl/log, so v4rl carries
// its own early-return macros. Anything an input can cause returns a Status whose message names
// the field, the value and what was expected (DESIGN.md §4); broken invariants use V4RL_CHECK.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace v4rl::core::internal {
inline absl::Status AsStatus(absl::Status status) { return status; }
template <typename T>
absl::Status AsStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}
}  // namespace v4rl::core::internal

#define V4RL_STATUS_CONCAT_INNER_(a, b) a##b
#define V4RL_STATUS_CONCAT_(a, b) V4RL_STATUS_CONCAT_INNER_(a, b)

// Returns from the current function with the error if `expr` (a Status or StatusOr) is not OK.
#define V4RL_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                 \
    ::absl::Status v4rl_status_ = ::v4rl::core::internal::AsStatus((expr));            \
    if (!v4rl_status_.ok()) return v4rl_status_;                                       \
  } while (0)

// `V4RL_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns `x` from a StatusOr, or returns its
// error from the current function.
#define V4RL_ASSIGN_OR_RETURN(lhs, expr) \
  V4RL_ASSIGN_OR_RETURN_IMPL_(V4RL_STATUS_CONCAT_(v4rl_status_or_, __LINE__), lhs, expr)

#define V4RL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()
