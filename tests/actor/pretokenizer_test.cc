// The hand-written DeepSeek pre-tokenizer on the cases spec/chat-encoding.md §8.2 lists and on
// each alternative of the main pattern; byte-exact agreement with Hugging Face tokenizers on a
// large corpus is checked through token ids in tokenizer_test.cc.
#include "actor/pretokenizer.h"

#include <string>
#include <vector>

#include "actor/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace v4rl::actor {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Pieces(std::string_view text) {
  std::vector<std::string> pieces;
  PreTokenize(text, [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

TEST(PreTokenizer, SpecExamples) {
  EXPECT_THAT(Pieces("    int x;"), ElementsAre("   ", " int", " x", ";"));
  EXPECT_THAT(Pieces("12345"), ElementsAre("123", "45"));
  EXPECT_THAT(Pieces("don't"), ElementsAre("don", "'t"));
  EXPECT_THAT(Pieces("3.14159"), ElementsAre("3", ".", "141", "59"));
  EXPECT_THAT(Pieces(">\n"), ElementsAre(">\n"));
  EXPECT_THAT(Pieces("\t\tx"), ElementsAre("\t", "\tx"));
  EXPECT_THAT(Pieces("価格は1000円です。"), ElementsAre("価格は", "100", "0", "円です", "。"));
}

TEST(PreTokenizer, MainPatternAlternatives) {
  // [punct][A-Za-z]+ before the letter alternative.
  EXPECT_THAT(Pieces("foo.bar(baz)"), ElementsAre("foo", ".bar", "(baz", ")"));
  // Optional non-letter, non-punct character before letters and marks.
  EXPECT_THAT(Pieces(" hello\u00a0world"), ElementsAre(" hello", "\u00a0world"));
  EXPECT_THAT(Pieces("e\u0301te"), ElementsAre("e\u0301te"));
  EXPECT_THAT(Pieces("\u0301abc"), ElementsAre("\u0301abc"));
  // Punctuation and symbols swallow following newlines, with one optional leading space.
  EXPECT_THAT(Pieces("a !!!\n\nb"), ElementsAre("a", " !!!\n\n", "b"));
  EXPECT_THAT(Pieces("x 😀😀 y"), ElementsAre("x", " 😀😀", " y"));
  // Whitespace: up to the last newline; else all but the last character before a word.
  EXPECT_THAT(Pieces("a \n  b"), ElementsAre("a", " \n", " ", " b"));
  EXPECT_THAT(Pieces("a\r\n\r\nb"), ElementsAre("a", "\r\n\r\n", "b"));
  EXPECT_THAT(Pieces("end   "), ElementsAre("end", "   "));
  EXPECT_THAT(Pieces("a  b"), ElementsAre("a", " ", " b"));
  // Numbers of other scripts are numbers too.
  EXPECT_THAT(Pieces("x²³½"), ElementsAre("x", "²³½"));
  // Kana and ideographs are isolated; Hangul is an ordinary letter run.
  EXPECT_THAT(Pieces("aカナb 한국"), ElementsAre("a", "カナ", "b", " 한국"));
}

TEST(PreTokenizer, UnmatchedCharactersFormTheirOwnPieces) {
  EXPECT_THAT(Pieces(std::string("a\x00\x01"
                                 "b",
                                 4)),
              ElementsAre("a", std::string("\x00", 1),
                          "\x01"
                          "b"));
  EXPECT_THAT(Pieces("a\xff\xfe"), ElementsAre("a", "\xff\xfe"));
}

TEST(PreTokenizer, PiecesConcatenateToTheInput) {
  const std::string text = "Hello, 世界! 12345 don't\n\n\t  x = y->z;  \r\n 😀\xff end";
  std::string joined;
  PreTokenize(text, [&](std::string_view piece) {
    EXPECT_FALSE(piece.empty());
    joined += piece;
  });
  EXPECT_EQ(joined, text);
}

}  // namespace
}  // namespace v4rl::actor
