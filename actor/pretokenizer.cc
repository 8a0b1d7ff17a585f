#include "actor/pretokenizer.h"

#include "actor/unicode.h"

namespace v4rl::actor {
namespace {

bool IsCrLf(char32_t cp) { return cp == '\r' || cp == '\n'; }
bool IsAsciiLetter(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool IsAsciiPunct(char32_t cp) {
  return (cp >= '!' && cp <= '/') || (cp >= ':' && cp <= '@') || (cp >= '[' && cp <= '`') ||
         (cp >= '{' && cp <= '~');
}
bool IsLetterOrMark(CharClass c) { return c == CharClass::kLetter || c == CharClass::kMark; }
bool IsPunctOrSymbol(CharClass c) { return c == CharClass::kPunct || c == CharClass::kSymbol; }
bool IsCjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x309F) ||
         (cp >= 0x30A0 && cp <= 0x30FF);
}

// End of the run of characters from `pos` that satisfy `pred`.
template <typename Pred>
size_t SkipWhile(std::string_view s, size_t pos, Pred pred) {
  while (pos < s.size()) {
    const Utf8Char c = DecodeUtf8(s, pos);
    if (!pred(c)) break;
    pos += c.len;
  }
  return pos;
}

// End of the match of the main pattern at `pos`, or `pos` when no alternative matches there.
// Alternatives are tried in the regex's order and the first that matches wins, as in a
// backtracking engine; each comment shows the alternative.
size_t MatchMain(std::string_view s, size_t pos) {
  const Utf8Char first = DecodeUtf8(s, pos);
  const size_t after_first = pos + first.len;

  // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
  if (IsAsciiPunct(first.cp)) {
    size_t end = after_first;
    while (end < s.size() && IsAsciiLetter(s[end])) ++end;
    if (end > after_first) return end;
  }

  // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+  (the optional character is tried first)
  const auto letter_or_mark = [](const Utf8Char& c) { return IsLetterOrMark(c.cls); };
  if (!IsCrLf(first.cp) && first.cls != CharClass::kLetter && !IsPunctOrSymbol(first.cls)) {
    const size_t end = SkipWhile(s, after_first, letter_or_mark);
    if (end > after_first) return end;
  }
  if (IsLetterOrMark(first.cls)) return SkipWhile(s, pos, letter_or_mark);

  //  ?[\p{P}\p{S}]+[\r\n]*
  const size_t symbols_start = first.cp == ' ' ? after_first : pos;
  const size_t symbols_end =
      SkipWhile(s, symbols_start, [](const Utf8Char& c) { return IsPunctOrSymbol(c.cls); });
  if (symbols_end > symbols_start) {
    return SkipWhile(s, symbols_end, [](const Utf8Char& c) { return IsCrLf(c.cp); });
  }

  if (first.cls != CharClass::kSpace) return pos;
  // The whitespace run at pos, with the end of its last CR/LF and the start of its last char.
  size_t end = pos;
  size_t after_last_crlf = pos;
  size_t last_start = pos;
  while (end < s.size()) {
    const Utf8Char c = DecodeUtf8(s, end);
    if (c.cls != CharClass::kSpace) break;
    last_start = end;
    end += c.len;
    if (IsCrLf(c.cp)) after_last_crlf = end;
  }
  // \s*[\r\n]+  (\s* backtracks to the last CR/LF of the run)
  if (after_last_crlf > pos) return after_last_crlf;
  // \s+(?!\S)  (the whole run at the end of the piece, else all but its last character)
  if (end == s.size()) return end;
  if (last_start > pos) return last_start;
  // \s+
  return end;
}

// Step 3: isolates the matches of the main pattern; unmatched characters between matches form
// pieces of their own.
void SplitMain(std::string_view s, absl::FunctionRef<void(std::string_view)> emit) {
  size_t gap_start = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t end = MatchMain(s, pos);
    if (end == pos) {
      pos += DecodeUtf8(s, pos).len;
      continue;
    }
    if (gap_start < pos) emit(s.substr(gap_start, pos - gap_start));
    emit(s.substr(pos, end - pos));
    gap_start = pos = end;
  }
  if (gap_start < s.size()) emit(s.substr(gap_start));
}

// Step 2: isolates runs of CJK ideographs, hiragana and katakana.
void SplitCjk(std::string_view s, absl::FunctionRef<void(std::string_view)> emit) {
  size_t run_start = 0;
  bool in_cjk = false;
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Char c = DecodeUtf8(s, pos);
    const bool cjk = IsCjk(c.cp);
    if (cjk != in_cjk && pos > run_start) {
      if (in_cjk) {
        emit(s.substr(run_start, pos - run_start));
      } else {
        SplitMain(s.substr(run_start, pos - run_start), emit);
      }
      run_start = pos;
    }
    in_cjk = cjk;
    pos += c.len;
  }
  if (run_start < s.size()) {
    if (in_cjk) {
      emit(s.substr(run_start));
    } else {
      SplitMain(s.substr(run_start), emit);
    }
  }
}

}  // namespace

void PreTokenize(std::string_view text, absl::FunctionRef<void(std::string_view)> emit) {
  // Step 1: numbers in groups of at most three characters; the rest goes to step 2.
  size_t gap_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    Utf8Char c = DecodeUtf8(text, pos);
    if (c.cls != CharClass::kNumber) {
      pos += c.len;
      continue;
    }
    if (gap_start < pos) SplitCjk(text.substr(gap_start, pos - gap_start), emit);
    size_t end = pos;
    for (int digits = 0; digits < 3 && end < text.size(); ++digits) {
      c = DecodeUtf8(text, end);
      if (c.cls != CharClass::kNumber) break;
      end += c.len;
    }
    emit(text.substr(pos, end - pos));
    gap_start = pos = end;
  }
  if (gap_start < text.size()) SplitCjk(text.substr(gap_start), emit);
}

}  // namespace v4rl::actor
