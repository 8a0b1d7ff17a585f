// Logging and invariant checks.
//
// V4RL_LOG(INFO) << "..." writes one line to stderr: "I 15:04:05.123 file.cc:42] ...".
// V4RL_CHECK(cond) << "..." aborts with the message when cond is false; it is for broken
// invariants only (bugs in v4rl), never for bad input, which returns a Status (DESIGN.md §4).
// Thread-safe: each message is written with a single write call.
#pragma once

#include <sstream>
#include <string>

namespace v4rl::core {

enum class LogSeverity { kInfo, kWarning, kError, kFatal };

// Minimum severity that is printed; V4RL_LOG_LEVEL=warning|error in the environment raises it.
LogSeverity MinLogSeverity();

// Accumulates one message and emits it on destruction (aborting for kFatal).
class LogMessage {
 public:
  LogMessage(const char* file, int line, LogSeverity severity);
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Swallows the stream expression when a CHECK passes; `&` binds looser than `<<`.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace v4rl::core

#define V4RL_LOG_SEVERITY_INFO ::v4rl::core::LogSeverity::kInfo
#define V4RL_LOG_SEVERITY_WARNING ::v4rl::core::LogSeverity::kWarning
#define V4RL_LOG_SEVERITY_ERROR ::v4rl::core::LogSeverity::kError
#define V4RL_LOG_SEVERITY_FATAL ::v4rl::core::LogSeverity::kFatal

#define V4RL_LOG(severity)                                                            \
  (V4RL_LOG_SEVERITY_##severity < ::v4rl::core::MinLogSeverity())                     \
      ? (void)0                                                                       \
      : ::v4rl::core::LogVoidify() &                                                  \
            ::v4rl::core::LogMessage(__FILE__, __LINE__, V4RL_LOG_SEVERITY_##severity) \
                .stream()

#define V4RL_CHECK(cond)                                                               \
  (cond) ? (void)0                                                                     \
         : ::v4rl::core::LogVoidify() &                                                \
               ::v4rl::core::LogMessage(__FILE__, __LINE__, V4RL_LOG_SEVERITY_FATAL)   \
                       .stream()                                                       \
                   << "Check failed: " #cond " "

#define V4RL_CHECK_OP_(a, b, op)                                                        \
  ((a)op(b)) ? (void)0                                                                  \
             : ::v4rl::core::LogVoidify() &                                             \
                   ::v4rl::core::LogMessage(__FILE__, __LINE__, V4RL_LOG_SEVERITY_FATAL) \
                           .stream()                                                    \
                       << "Check failed: " #a " " #op " " #b " (" << (a) << " vs " << (b) << ") "

#define V4RL_CHECK_EQ(a, b) V4RL_CHECK_OP_(a, b, ==)
#define V4RL_CHECK_NE(a, b) V4RL_CHECK_OP_(a, b, !=)
#define V4RL_CHECK_LT(a, b) V4RL_CHECK_OP_(a, b, <)
#define V4RL_CHECK_LE(a, b) V4RL_CHECK_OP_(a, b, <=)
#define V4RL_CHECK_GT(a, b) V4RL_CHECK_OP_(a, b, >)
#define V4RL_CHECK_GE(a, b) V4RL_CHECK_OP_(a, b, >=)
// Aborts when a Status is not OK (for statuses that can only fail through a bug).
#define V4RL_CHECK_OK(expr)                                                   \
  do {                                                                        \
    ::absl::Status v4rl_check_status_ = (expr);                               \
    V4RL_CHECK(v4rl_check_status_.ok()) << v4rl_check_status_.ToString();     \
  } while (0)
