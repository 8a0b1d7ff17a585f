// The DeepSeek-V3/V4 pre-tokenizer (spec/chat-encoding.md §8.2), hand-written: the three `Split`
// steps of tokenizer.json (digits in groups of at most three; runs of CJK/kana; the main
// word/punctuation/space pattern), each with behaviour Isolated and applied to every piece of the
// step before, exactly as Hugging Face tokenizers runs those regexes. The byte-level mapping that
// follows them in tokenizer.json is done by the BPE model (bpe.h).
//
// A hand-written scanner avoids a regex dependency (the pattern needs \p{..} classes and a
// lookahead, which rules out RE2 and std::regex) and is several times faster.
// Thread-safe: pure functions.
#pragma once

#include <string_view>

#include "absl/functional/function_ref.h"

namespace v4rl::actor {

// The regexes of the three Split steps as they appear in tokenizer.json after JSON decoding; the
// loader accepts a pre_tokenizer only when it is exactly these (see tokenizer_json.cc).
inline constexpr std::string_view kDeepSeekDigitsPattern = "\\p{N}{1,3}";
inline constexpr std::string_view kDeepSeekCjkPattern =
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
inline constexpr std::string_view kDeepSeekMainPattern =
    "[!\"#$%&'()*+,\\-./"
    ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

// Calls `emit` with each piece of `text`, in order; the pieces are non-empty and concatenate to
// `text`. Invalid UTF-8 never fails: each invalid byte is treated as one character of class
// kOther (no Unicode class), so it ends up in a piece of its own or with its neighbours.
void PreTokenize(std::string_view text, absl::FunctionRef<void(std::string_view)> emit);

}  // namespace v4rl::actor
