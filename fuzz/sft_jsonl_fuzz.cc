// libFuzzer target: the SFT JSONL dataset parser (learner/sft_data.h) on arbitrary bytes. It must
// return a Status for anything malformed and never crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "learner/sft_data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto examples = v4rl::learner::ParseSftJsonl(text, "fuzz.jsonl", /*vocab_size=*/64);
  if (examples.ok()) {
    std::vector<const v4rl::learner::SftExample*> pointers;
    for (const auto& example : *examples) pointers.push_back(&example);
    v4rl::learner::MakeSftBatch(pointers);
  }
  return 0;
}
