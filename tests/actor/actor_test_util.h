// Helpers shared by the actor tests: test data files, the real DeepSeek tokenizer.json fetched by
// scripts/fetch_tokenizer.sh, and a small synthetic tokenizer.json.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "actor/tokenizer.h"

namespace v4rl::actor::testing {

// Contents of tests/data/actor/<relative>; fails the test when unreadable.
std::string ReadTestData(const std::string& relative);

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

// Where scripts/fetch_tokenizer.sh puts tokenizer.json ($V4RL_TOKENIZER_JSON overrides).
std::string RealTokenizerPath();

// The DeepSeek-V3 tokenizer.json plus the V4 added tokens, loaded once per process; nullptr (with a
// test failure pointing at scripts/fetch_tokenizer.sh) when the file is missing.
const Tokenizer* RealTokenizer();

// A byte-level tokenizer.json with DeepSeek's pre-tokenizer: the 256 byte symbols (id = byte
// value), merges building "hello" (259) and "Ġworld" (264), and added tokens
// "<｜end▁of▁sentence｜>" (1000, normalized=false), "<｜User｜>" (1001), "<a>" (1002) and "<ab>"
// (1003).
std::string SyntheticTokenizerJson();

}  // namespace v4rl::actor::testing
