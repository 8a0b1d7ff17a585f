#include "actor/unicode.h"

#include <algorithm>
#include <array>

namespace v4rl::actor {
namespace {

CharClass LookUpRanges(char32_t cp) {
  // upper_bound on (cp << 3 | 7) finds the first range starting after cp.
  const uint32_t key = (static_cast<uint32_t>(cp) << 3) | 7;
  const uint32_t* begin = internal::kCharClassRanges;
  const uint32_t* end = begin + internal::kNumCharClassRanges;
  const uint32_t* it = std::upper_bound(begin, end, key);
  return static_cast<CharClass>(*(it - 1) & 7);
}

// Classes of U+0000..U+FFFF, where nearly all text lives; built once from the ranges.
const std::array<CharClass, 0x10000>& BmpTable() {
  static const std::array<CharClass, 0x10000>* table = [] {
    auto* t = new std::array<CharClass, 0x10000>();
    for (char32_t cp = 0; cp < 0x10000; ++cp) (*t)[cp] = LookUpRanges(cp);
    return t;
  }();
  return *table;
}

bool IsContinuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

// Bounds of the second byte of a sequence with lead `lead` (Unicode Table 3-7), which is what
// excludes overlong forms, surrogates and code points above U+10FFFF.
void SecondByteRange(unsigned char lead, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (lead == 0xE0) *lo = 0xA0;
  if (lead == 0xED) *hi = 0x9F;
  if (lead == 0xF0) *lo = 0x90;
  if (lead == 0xF4) *hi = 0x8F;
}

// Length a lead byte announces, 0 when it cannot start a sequence.
int SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Number of bytes of the (possibly truncated) sequence at text[pos] that are valid so far; equals
// SequenceLength(lead) when the sequence is complete and valid.
int ValidPrefix(std::string_view text, size_t pos, int length) {
  if (length == 0) return 0;
  int valid = 1;
  unsigned char lo, hi;
  SecondByteRange(static_cast<unsigned char>(text[pos]), &lo, &hi);
  for (int i = 1; i < length && pos + i < text.size(); ++i) {
    const unsigned char byte = static_cast<unsigned char>(text[pos + i]);
    const bool ok = (i == 1) ? (byte >= lo && byte <= hi) : IsContinuation(byte);
    if (!ok) break;
    ++valid;
  }
  return valid;
}

}  // namespace

CharClass GetCharClass(char32_t cp) {
  if (cp < 0x10000) return BmpTable()[cp];
  if (cp > 0x10FFFF) return CharClass::kOther;
  return LookUpRanges(cp);
}

Utf8Char DecodeUtf8(std::string_view text, size_t pos) {
  const unsigned char lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) return {lead, 1, BmpTable()[lead]};
  const int length = SequenceLength(lead);
  if (length == 0 || ValidPrefix(text, pos, length) != length) {
    return {kInvalidCodePoint, 1, CharClass::kOther};
  }
  char32_t cp = lead & (0xFF >> (length + 1));
  for (int i = 1; i < length; ++i) {
    cp = (cp << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  }
  return {cp, length, GetCharClass(cp)};
}

bool IsValidUtf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = DecodeUtf8(text, pos);
    if (c.cp == kInvalidCodePoint) return false;
    pos += c.len;
  }
  return true;
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  size_t pos = 0;
  while (pos < bytes.size()) {
    const int length = SequenceLength(static_cast<unsigned char>(bytes[pos]));
    const int valid = ValidPrefix(bytes, pos, length);
    if (length != 0 && valid == length) {
      out->append(bytes.data() + pos, length);
      pos += length;
    } else {
      // A maximal subpart of an ill-formed sequence becomes one replacement character.
      out->append(kReplacement);
      pos += std::max(valid, 1);
    }
  }
}

}  // namespace v4rl::actor
