// Whole-file reads and crash-safe writes.
// WriteFileAtomic writes to "<path>.tmp.<pid>", fsyncs, then renames over `path`, so readers see
// the old file or the new one, never a torn write.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace v4rl::core {

// NotFound when missing; OutOfRange when larger than `max_bytes`.
absl::StatusOr<std::string> ReadFile(const std::string& path, int64_t max_bytes = int64_t{1} << 32);
absl::Status WriteFileAtomic(const std::string& path, const std::string& contents);

}  // namespace v4rl::core
