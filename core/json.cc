#include "core/json.h"

#include "absl/strings/str_format.h"
#include "core/file.h"
#include "core/status.h"

namespace v4rl::core {

absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, std::string_view what,
                                         const JsonLimits& limits) {
  if (static_cast<int64_t>(text.size()) > limits.max_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %d bytes of JSON exceed the limit of %d", std::string(what), text.size(),
        limits.max_bytes));
  }
  bool too_deep = false;
  // The callback sees every structural event; depth counts open objects and arrays.
  const auto depth_guard = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
    if ((event == nlohmann::json::parse_event_t::object_start ||
         event == nlohmann::json::parse_event_t::array_start) &&
        depth >= limits.max_depth) {
      too_deep = true;
    }
    return !too_deep;
  };
  nlohmann::json parsed =
      nlohmann::json::parse(text.begin(), text.end(), depth_guard, /*allow_exceptions=*/false);
  if (too_deep) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: JSON nesting deeper than %d levels", std::string(what), limits.max_depth));
  }
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: malformed JSON", std::string(what)));
  }
  return parsed;
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path, const JsonLimits& limits) {
  V4RL_ASSIGN_OR_RETURN(std::string text, ReadFile(path, limits.max_bytes));
  return ParseJson(text, path, limits);
}

namespace {

absl::StatusOr<const nlohmann::json*> Field(const nlohmann::json& object, std::string_view key,
                                            std::string_view what) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected a JSON object", std::string(what)));
  }
  auto it = object.find(std::string(key));
  if (it == object.end()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: missing field '%s'", std::string(what), std::string(key)));
  }
  return &*it;
}

absl::Status WrongType(std::string_view key, std::string_view what, const char* expected,
                       const nlohmann::json& value) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' must be %s, got %s",
                                                    std::string(what), std::string(key),
                                                    expected, value.type_name()));
}

}  // namespace

absl::StatusOr<int64_t> JsonInt(const nlohmann::json& object, std::string_view key,
                                std::string_view what) {
  V4RL_ASSIGN_OR_RETURN(const nlohmann::json* value, Field(object, key, what));
  if (value->is_number_integer()) return value->get<int64_t>();
  if (value->is_number_float()) {
    const double d = value->get<double>();
    if (d == static_cast<double>(static_cast<int64_t>(d))) return static_cast<int64_t>(d);
  }
  return WrongType(key, what, "an integer", *value);
}

absl::StatusOr<double> JsonNumber(const nlohmann::json& object, std::string_view key,
                                  std::string_view what) {
  V4RL_ASSIGN_OR_RETURN(const nlohmann::json* value, Field(object, key, what));
  if (value->is_number()) return value->get<double>();
  return WrongType(key, what, "a number", *value);
}

absl::StatusOr<std::string> JsonString(const nlohmann::json& object, std::string_view key,
                                       std::string_view what) {
  V4RL_ASSIGN_OR_RETURN(const nlohmann::json* value, Field(object, key, what));
  if (value->is_string()) return value->get<std::string>();
  return WrongType(key, what, "a string", *value);
}

absl::StatusOr<bool> JsonBool(const nlohmann::json& object, std::string_view key,
                              std::string_view what) {
  V4RL_ASSIGN_OR_RETURN(const nlohmann::json* value, Field(object, key, what));
  if (value->is_boolean()) return value->get<bool>();
  return WrongType(key, what, "true or false", *value);
}

}  // namespace v4rl::core
