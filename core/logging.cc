#include "core/logging.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace v4rl::core {

LogSeverity MinLogSeverity() {
  static const LogSeverity min_severity = [] {
    const char* env = std::getenv("V4RL_LOG_LEVEL");
    if (env == nullptr) return LogSeverity::kInfo;
    if (std::strcmp(env, "warning") == 0) return LogSeverity::kWarning;
    if (std::strcmp(env, "error") == 0) return LogSeverity::kError;
    return LogSeverity::kInfo;
  }();
  return min_severity;
}

LogMessage::LogMessage(const char* file, int line, LogSeverity severity) : severity_(severity) {
  static constexpr char kLetters[] = {'I', 'W', 'E', 'F'};
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm_utc;
  gmtime_r(&seconds, &tm_utc);
  char prefix[32];
  std::snprintf(prefix, sizeof(prefix), "%c %02d:%02d:%02d.%03d ",
                kLetters[static_cast<int>(severity)], tm_utc.tm_hour, tm_utc.tm_min,
                tm_utc.tm_sec, millis);
  const char* base = std::strrchr(file, '/');
  stream_ << prefix << (base ? base + 1 : file) << ":" << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  const std::string text = stream_.str();
  // One write keeps concurrent messages from interleaving.
  ssize_t ignored = ::write(STDERR_FILENO, text.data(), text.size());
  (void)ignored;
  if (severity_ == LogSeverity::kFatal) std::abort();
}

}  // namespace v4rl::core
