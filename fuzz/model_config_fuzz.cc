// libFuzzer target: model config.json parsing (model/config.h), both formats, on arbitrary bytes.
// It must return a Status for anything malformed and never crash, hang or allocate without
// bound; an accepted config must also survive the parameter walk.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/json.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto json = v4rl::core::ParseJson(text, "fuzz config.json");
  if (!json.ok()) return 0;
  auto config = v4rl::model::ParseModelConfig(*json, "fuzz config.json");
  if (config.ok() && config->num_layers <= 64) v4rl::model::CountParameters(*config);
  return 0;
}
