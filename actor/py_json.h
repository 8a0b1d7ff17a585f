// Python `json` compatibility for the chat encoder, which must reproduce DeepSeek's Python encoder
// byte for byte (spec/chat-encoding.md §2.5, §2.7): parsing keeps key order, integers of any
// size and json.loads's duplicate-key rule (the last value wins, in the first key's place);
// serializing writes what json.dumps(value, ensure_ascii=False) writes (", " and ": "
// separators, Python float repr, non-ASCII kept raw).
//
// Values are nlohmann::ordered_json. An integer too large for 64 bits is kept exactly as a
// `binary` value holding its decimal digits (subtype kBigIntSubtype); only PyJsonDumps prints it.
// Not supported (json.loads accepts them, ParsePyJson rejects them): NaN/Infinity literals,
// numbers beyond the double range (1e400, integers of 309+ digits) and lone surrogate escapes.
// Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace v4rl::actor {

using PyJson = nlohmann::ordered_json;

inline constexpr std::uint8_t kBigIntSubtype = 0x42;

struct PyJsonLimits {
  size_t max_bytes = size_t{64} << 20;
  int max_depth = 100;
};

// InvalidArgument "<what>: ..." for malformed JSON (with the byte offset), nesting deeper than
// max_depth or text longer than max_bytes.
absl::StatusOr<PyJson> ParsePyJson(std::string_view text, std::string_view what,
                                   const PyJsonLimits& limits = {});

// json.dumps(value, ensure_ascii=False).
std::string PyJsonDumps(const PyJson& value);
// json.dumps(text, ensure_ascii=False) of a string, appended to *out.
void AppendPyJsonString(std::string_view text, std::string* out);
// repr(float), as json.dumps writes floats ("1.5", "1e+20", "-0.0", "Infinity").
std::string PyFloatRepr(double value);

// Python truthiness of the value json.loads would give (empty containers, "", 0 and null are
// false).
bool PyTruthy(const PyJson& value);

}  // namespace v4rl::actor
