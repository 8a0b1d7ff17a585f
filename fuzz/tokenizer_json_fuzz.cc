// libFuzzer target: the tokenizer.json loader (actor/tokenizer.h) on arbitrary bytes. Loading must
// return a Status for anything malformed and never crash, hang or read out of bounds; a tokenizer
// that loads must encode any bytes (the input itself) so that its token bytes give them back.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "actor/deepseek_v4_tokens.h"
#include "actor/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto tokenizer = v4rl::actor::Tokenizer::FromJson(text, "fuzz.json");
  if (!tokenizer.ok()) return 0;
  (void)(*tokenizer)->AddTokens(v4rl::actor::DeepSeekV4AddedTokens());
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text);
  std::string bytes;
  for (int32_t id : ids) {
    auto token = (*tokenizer)->TokenBytes(id);
    if (!token.has_value()) __builtin_trap();
    bytes.append(*token);
  }
  if (bytes != text) __builtin_trap();
  if (!(*tokenizer)->Decode(ids).ok()) __builtin_trap();
  return 0;
}
