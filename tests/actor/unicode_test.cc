// UTF-8 decoding, the character classes and lossy repair.
#include "actor/unicode.h"

#include <string>

#include "actor/byte_level.h"
#include "gtest/gtest.h"

namespace v4rl::actor {
namespace {

TEST(Unicode, Classes) {
  EXPECT_EQ(GetCharClass('a'), CharClass::kLetter);
  EXPECT_EQ(GetCharClass(U'你'), CharClass::kLetter);
  EXPECT_EQ(GetCharClass(0x0301), CharClass::kMark);
  EXPECT_EQ(GetCharClass('7'), CharClass::kNumber);
  EXPECT_EQ(GetCharClass(U'½'), CharClass::kNumber);
  EXPECT_EQ(GetCharClass(','), CharClass::kPunct);
  EXPECT_EQ(GetCharClass(U'。'), CharClass::kPunct);
  EXPECT_EQ(GetCharClass('+'), CharClass::kSymbol);
  EXPECT_EQ(GetCharClass(0x1F600), CharClass::kSymbol);
  EXPECT_EQ(GetCharClass(' '), CharClass::kSpace);
  EXPECT_EQ(GetCharClass(0x3000), CharClass::kSpace);
  EXPECT_EQ(GetCharClass(0x85), CharClass::kSpace);
  EXPECT_EQ(GetCharClass(0x1F), CharClass::kOther);
  EXPECT_EQ(GetCharClass(0x200D), CharClass::kOther);
  EXPECT_EQ(GetCharClass(0x1D400), CharClass::kLetter);
  // Unicode 16 additions, which the reference engine knows (Python 3.11's tables do not).
  EXPECT_EQ(GetCharClass(0x105C0), CharClass::kLetter);
  EXPECT_EQ(GetCharClass(0x1CC00), CharClass::kSymbol);
  EXPECT_EQ(GetCharClass(0x10FFFF), CharClass::kOther);
  EXPECT_EQ(GetCharClass(0x110000), CharClass::kOther);
}

TEST(Unicode, DecodeRejectsIllFormedSequences) {
  const auto decode = [](std::string_view s) { return DecodeUtf8(s, 0); };
  EXPECT_EQ(decode("\xC3\xA9").cp, 0xE9u);
  EXPECT_EQ(decode("\xC3\xA9").len, 2);
  EXPECT_EQ(decode("\xF0\x9F\x98\x80").cp, 0x1F600u);
  for (std::string_view bad : {"\xC0\x80", "\xE0\x80\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                               "\xE2\x82", "\x80", "\xFF", "\xF0\x9F\x98"}) {
    const Utf8Char c = decode(bad);
    EXPECT_EQ(c.cp, kInvalidCodePoint) << bad;
    EXPECT_EQ(c.len, 1);
    EXPECT_FALSE(IsValidUtf8(bad));
  }
  EXPECT_TRUE(IsValidUtf8("héllo 世界 😀"));
}

TEST(Unicode, LossyReplacesMaximalSubparts) {
  const auto lossy = [](std::string_view s) {
    std::string out;
    AppendUtf8Lossy(s, &out);
    return out;
  };
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("ok"), "ok");
  EXPECT_EQ(lossy("\xE2\x82"
                  "a"),
            r + "a");                           // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(lossy("\xF0\x80"), r + r);          // F0 80 is no prefix of a valid sequence
  EXPECT_EQ(lossy("\xED\xA0\x80"), r + r + r);  // surrogates are not valid prefixes
  EXPECT_EQ(lossy("a\xF0\x9F\x98"), "a" + r);
  EXPECT_EQ(lossy("\xC3\xA9\xFF"), "\xC3\xA9" + r);
}

TEST(ByteLevel, AlphabetRoundTrips) {
  EXPECT_EQ(ByteToChar(' '), 0x120u);   // "Ġ"
  EXPECT_EQ(ByteToChar('\n'), 0x10Au);  // "Ċ"
  EXPECT_EQ(ByteToChar('a'), static_cast<char32_t>('a'));
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(CharToByte(ByteToChar(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(CharToByte(0x144), std::nullopt);
  EXPECT_EQ(TokenStringToBytes("ĠhelloĊ"), " hello\n");
  EXPECT_EQ(TokenStringToBytes("<｜User｜>"), "<｜User｜>");
}

}  // namespace
}  // namespace v4rl::actor
