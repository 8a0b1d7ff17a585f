#include "actor/py_json.h"

#include <charconv>
#include <cmath>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"

namespace v4rl::actor {
namespace {

// Builds a PyJson from nlohmann's SAX events, with depth bounds and exact big integers.
class PyJsonBuilder {
 public:
  explicit PyJsonBuilder(int max_depth) : max_depth_(max_depth) {}

  bool null() { return Put(nullptr); }
  bool boolean(bool value) { return Put(value); }
  bool number_integer(PyJson::number_integer_t value) { return Put(value); }
  bool number_unsigned(PyJson::number_unsigned_t value) { return Put(value); }
  bool number_float(PyJson::number_float_t value, const std::string& lexeme) {
    if (lexeme.find_first_of(".eE") != std::string::npos) return Put(value);
    // An integer literal beyond 64 bits: keep its digits.
    return Put(
        PyJson::binary(std::vector<std::uint8_t>(lexeme.begin(), lexeme.end()), kBigIntSubtype));
  }
  bool string(std::string& value) { return Put(std::move(value)); }
  bool binary(PyJson::binary_t&) { return Fail("binary values do not occur in JSON text"); }
  bool start_object(std::size_t) { return Open(PyJson::object()); }
  bool key(std::string& key) {
    key_ = std::move(key);
    return true;
  }
  bool end_object() { return Close(); }
  bool start_array(std::size_t) { return Open(PyJson::array()); }
  bool end_array() { return Close(); }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception&) {
    if (error_.empty()) error_ = absl::StrFormat("malformed JSON near byte %d", position);
    return false;
  }

  PyJson& root() { return root_; }
  const std::string& error() const { return error_; }

 private:
  bool Fail(const std::string& message) {
    error_ = message;
    return false;
  }
  // Stores a finished value in the innermost open container (or as the root) and returns where
  // it now lives.
  PyJson* Store(PyJson value) {
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    OpenContainer& parent = stack_.back();
    if (parent.value->is_array()) {
      parent.value->push_back(std::move(value));
      return &parent.value->back();
    }
    // ordered_json's own insertion searches keys linearly; the index keeps objects with many keys
    // linear-time. A repeated key keeps its first position and takes the new value, like
    // assignment to a Python dict.
    auto& entries = static_cast<Entries&>(parent.value->get_ref<PyJson::object_t&>());
    auto [it, inserted] = parent.key_index.try_emplace(key_, entries.size());
    if (!inserted) {
      entries[it->second].second = std::move(value);
      return &entries[it->second].second;
    }
    entries.emplace_back(key_, std::move(value));
    return &entries.back().second;
  }
  bool Put(PyJson value) {
    Store(std::move(value));
    return true;
  }
  bool Open(PyJson container) {
    if (static_cast<int>(stack_.size()) >= max_depth_) {
      return Fail(absl::StrFormat("JSON nesting deeper than %d levels", max_depth_));
    }
    stack_.push_back({Store(std::move(container)), {}});
    return true;
  }
  bool Close() {
    stack_.pop_back();
    return true;
  }

  int max_depth_;
  PyJson root_;
  // The vector of key/value pairs that ordered_json's object type derives from.
  using Entries = std::vector<std::pair<const std::string, PyJson>>;
  struct OpenContainer {
    PyJson* value;
    absl::flat_hash_map<std::string, size_t> key_index;  // objects only: key -> entry index
  };
  std::vector<OpenContainer> stack_;  // innermost last
  std::string key_;
  std::string error_;
};

void AppendDumps(const PyJson& value, std::string* out) {
  switch (value.type()) {
    case PyJson::value_t::null:
      out->append("null");
      return;
    case PyJson::value_t::boolean:
      out->append(value.get<bool>() ? "true" : "false");
      return;
    case PyJson::value_t::number_integer:
      out->append(std::to_string(value.get<PyJson::number_integer_t>()));
      return;
    case PyJson::value_t::number_unsigned:
      out->append(std::to_string(value.get<PyJson::number_unsigned_t>()));
      return;
    case PyJson::value_t::number_float:
      out->append(PyFloatRepr(value.get<double>()));
      return;
    case PyJson::value_t::string:
      AppendPyJsonString(value.get_ref<const std::string&>(), out);
      return;
    case PyJson::value_t::binary: {
      const auto& digits = value.get_binary();
      out->append(digits.begin(), digits.end());
      return;
    }
    case PyJson::value_t::array: {
      out->push_back('[');
      bool first = true;
      for (const PyJson& item : value) {
        if (!first) out->append(", ");
        first = false;
        AppendDumps(item, out);
      }
      out->push_back(']');
      return;
    }
    case PyJson::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out->append(", ");
        first = false;
        AppendPyJsonString(key, out);
        out->append(": ");
        AppendDumps(item, out);
      }
      out->push_back('}');
      return;
    }
    case PyJson::value_t::discarded:
      out->append("null");
      return;
  }
}

}  // namespace

absl::StatusOr<PyJson> ParsePyJson(std::string_view text, std::string_view what,
                                   const PyJsonLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %d bytes of JSON exceed the limit of %d",
                                                      std::string(what), text.size(),
                                                      limits.max_bytes));
  }
  PyJsonBuilder builder(limits.max_depth);
  if (!PyJson::sax_parse(text.begin(), text.end(), &builder)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s", std::string(what), builder.error()));
  }
  return std::move(builder.root());
}

std::string PyJsonDumps(const PyJson& value) {
  std::string out;
  AppendDumps(value, &out);
  return out;
}

void AppendPyJsonString(std::string_view text, std::string* out) {
  out->push_back('"');
  for (char c : text) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out->append(absl::StrFormat("\\u%04x", static_cast<unsigned char>(c)));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

std::string PyFloatRepr(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  // Shortest round-trip digits, as Python's repr, then Python's layout: positional notation when
  // the decimal exponent is in (-4, 16], scientific otherwise.
  char buffer[64];
  const auto result =
      std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  const std::string_view sci(buffer, result.ptr - buffer);  // e.g. "-1.2345e+29"
  const size_t e = sci.find('e');
  std::string out = sci[0] == '-' ? "-" : "";
  std::string digits;
  for (char c : sci.substr(out.size(), e - out.size())) {
    if (c != '.') digits.push_back(c);
  }
  int exponent = 0;
  std::from_chars(sci.data() + e + (sci[e + 1] == '+' ? 2 : 1), sci.data() + sci.size(), exponent);
  const int point = exponent + 1;  // digits[0:point] are the integer part
  const int num_digits = static_cast<int>(digits.size());
  if (point > -4 && point <= 16) {
    if (point <= 0) {
      out += "0." + std::string(-point, '0') + digits;
    } else if (point >= num_digits) {
      out += digits + std::string(point - num_digits, '0') + ".0";
    } else {
      out += digits.substr(0, point) + "." + digits.substr(point);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (num_digits > 1) out += "." + digits.substr(1);
  return out + absl::StrFormat("e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
}

bool PyTruthy(const PyJson& value) {
  switch (value.type()) {
    case PyJson::value_t::null:
    case PyJson::value_t::discarded:
      return false;
    case PyJson::value_t::boolean:
      return value.get<bool>();
    case PyJson::value_t::number_integer:
      return value.get<PyJson::number_integer_t>() != 0;
    case PyJson::value_t::number_unsigned:
      return value.get<PyJson::number_unsigned_t>() != 0;
    case PyJson::value_t::number_float:
      return value.get<double>() != 0.0;
    case PyJson::value_t::binary:
      return true;  // a big integer is never zero
    case PyJson::value_t::string:
      return !value.get_ref<const std::string&>().empty();
    case PyJson::value_t::array:
    case PyJson::value_t::object:
      return !value.empty();
  }
  return false;
}

}  // namespace v4rl::actor
