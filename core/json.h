// JSON parsing through nlohmann-json with bounded size and nesting, plus typed field access that
// turns a missing or mistyped field into a Status naming the field.
// Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace v4rl::core {

struct JsonLimits {
  int64_t max_bytes = 64 << 20;
  int max_depth = 64;
};

// InvalidArgument on malformed JSON (with the byte offset), too-deep nesting or oversize input.
// `what` names the input in messages ("config.json", "safetensors header").
absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, std::string_view what,
                                         const JsonLimits& limits = {});
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path, const JsonLimits& limits = {});

// Typed getters: InvalidArgument "<what>: field '<key>' ..." when absent or of the wrong type.
absl::StatusOr<int64_t> JsonInt(const nlohmann::json& object, std::string_view key,
                                std::string_view what);
absl::StatusOr<double> JsonNumber(const nlohmann::json& object, std::string_view key,
                                  std::string_view what);
absl::StatusOr<std::string> JsonString(const nlohmann::json& object, std::string_view key,
                                       std::string_view what);
absl::StatusOr<bool> JsonBool(const nlohmann::json& object, std::string_view key,
                              std::string_view what);

}  // namespace v4rl::core
