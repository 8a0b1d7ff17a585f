#include "actor/byte_level.h"

#include <array>

#include "actor/unicode.h"

namespace v4rl::actor {
namespace {

constexpr bool MapsToItself(int b) {
  return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

constexpr std::array<char32_t, 256> kByteToChar = [] {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    table[b] = MapsToItself(b) ? static_cast<char32_t>(b) : next++;
  }
  return table;
}();

}  // namespace

char32_t ByteToChar(uint8_t b) { return kByteToChar[b]; }

std::optional<uint8_t> CharToByte(char32_t cp) {
  if (cp < 256) {
    if (MapsToItself(static_cast<int>(cp))) return static_cast<uint8_t>(cp);
    return std::nullopt;
  }
  if (cp >= 256 + 68) return std::nullopt;
  // The 68 remapped bytes, in increasing order, took U+0100.. in order.
  int index = static_cast<int>(cp) - 256;
  for (int b = 0; b < 256; ++b) {
    if (!MapsToItself(b) && index-- == 0) return static_cast<uint8_t>(b);
  }
  return std::nullopt;
}

std::string TokenStringToBytes(std::string_view token) {
  std::string bytes;
  for (size_t pos = 0; pos < token.size();) {
    const Utf8Char c = DecodeUtf8(token, pos);
    const std::optional<uint8_t> b = CharToByte(c.cp);
    if (!b.has_value()) return std::string(token);
    bytes.push_back(static_cast<char>(*b));
    pos += c.len;
  }
  return bytes;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace v4rl::actor
