// Unicode helpers for the tokenizer: UTF-8 decoding that never fails, the character classes the
// DeepSeek pre-tokenizer regexes use (spec/chat-encoding.md §8.2), and lossy UTF-8 repair.
//
// The class table is generated from what Hugging Face tokenizers' regex engine matches
// (scripts/gen_unicode_classes.py), so rare and recently added code points split the same way.
// Thread-safe: pure functions over constant tables (the BMP table is built once, on first use).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace v4rl::actor {

// One class per code point; \s is the White_Space property, which shares no code point with the
// other five.
enum class CharClass : uint8_t {
  kOther = 0,   // controls, format, private use, unassigned, invalid bytes
  kLetter = 1,  // \p{L}
  kMark = 2,    // \p{M}
  kNumber = 3,  // \p{N}
  kPunct = 4,   // \p{P}
  kSymbol = 5,  // \p{S}
  kSpace = 6,   // \s
};

CharClass GetCharClass(char32_t cp);

// A decoded character: its code point, byte length (1..4) and class. An invalid or truncated
// UTF-8 sequence decodes as one byte with cp == kInvalidCodePoint and class kOther.
struct Utf8Char {
  char32_t cp;
  int len;
  CharClass cls;
};
inline constexpr char32_t kInvalidCodePoint = 0x110000;

// Decodes the character starting at text[pos] (pos < text.size()). Rejects overlong forms,
// surrogates and values above U+10FFFF.
Utf8Char DecodeUtf8(std::string_view text, size_t pos);

bool IsValidUtf8(std::string_view text);

// Appends `bytes` to *out with each maximal invalid subsequence replaced by U+FFFD, as Rust's
// String::from_utf8_lossy (which Hugging Face tokenizers' decoder uses) does.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

namespace internal {
// Generated in unicode_class_table.cc: entries (first code point << 3) | CharClass, sorted; each
// range runs to the next entry's first code point, the last one to U+10FFFF.
extern const uint32_t kCharClassRanges[];
extern const int kNumCharClassRanges;
}  // namespace internal

}  // namespace v4rl::actor
