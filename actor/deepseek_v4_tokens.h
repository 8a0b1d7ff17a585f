// The DeepSeek-V4 added tokens that the DeepSeek-V3 tokenizer.json lacks (spec/chat-encoding.md
// §1.1): adding them to the V3 file (same BPE) gives the V4 tokenizer for every string the chat
// encoder writes. A real V4 tokenizer.json already has them, and Tokenizer::AddTokens skips
// tokens present with the same id.
// Thread-safe: constant data.
#pragma once

#include <span>

#include "actor/tokenizer.h"

namespace v4rl::actor {

// <think> 128821, </think> 128822, ｜DSML｜ 128825, <｜latest_reminder｜> 128828 and the
// quick-instruction task tokens (128829-128832, 128836, 128844, 128845).
std::span<const AddedToken> DeepSeekV4AddedTokens();

}  // namespace v4rl::actor
