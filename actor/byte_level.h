// The GPT-2 byte-level alphabet that byte-level BPE vocabularies are written in: every byte maps
// to one printable code point (printable Latin-1 bytes to themselves, the other 68 bytes to
// U+0100..U+0143 in order), so token strings in tokenizer.json are valid text.
// Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace v4rl::actor {

// The code point byte `b` is written as.
char32_t ByteToChar(uint8_t b);

// The byte a code point of the alphabet stands for; nullopt for code points outside it.
std::optional<uint8_t> CharToByte(char32_t cp);

// The bytes a vocabulary token string stands for. As the ByteLevel decoder of Hugging Face
// tokenizers does, a token with any character outside the alphabet stands for its own UTF-8
// bytes (e.g. "<｜begin▁of▁sentence｜>" in DeepSeek's vocabulary).
std::string TokenStringToBytes(std::string_view token);

// Appends the UTF-8 encoding of `cp` (< 0x110000) to *out.
void AppendUtf8(char32_t cp, std::string* out);

}  // namespace v4rl::actor
