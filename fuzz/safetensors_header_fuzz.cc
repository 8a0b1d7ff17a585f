// libFuzzer target for the safetensors header parser (DESIGN.md §4: every parser of outside bytes
// has a fuzz target). Build and run it with `scripts/fuzz.sh safetensors SECONDS`.
//
// Each input is parsed twice: as a whole file image (length prefix + header + data), and as bare
// header JSON against a large data region, so that offsets pass and the checks after them run
// without the fuzzer having to find a consistent length prefix first. When the parser accepts,
// its promises are re-checked here, so a wrong accept traps like a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/types/span.h"
#include "core/dtype.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace {

using v4rl::core::SafetensorsEntry;
using v4rl::core::SafetensorsHeader;

// A terabyte: larger than any offset a small input can spell out by accident.
constexpr int64_t kJsonOnlyDataBytes = int64_t{1} << 40;

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

void CheckAcceptedHeader(const SafetensorsHeader& header, int64_t data_bytes) {
  const SafetensorsEntry* previous = nullptr;  // last non-empty entry
  for (const SafetensorsEntry& entry : header.entries) {
    Require(0 <= entry.data_begin && entry.data_begin <= entry.data_end &&
            entry.data_end <= data_bytes);
    // Readers build contiguous views of accepted entries; this must not CHECK-fail.
    const v4rl::core::TensorView view =
        v4rl::core::TensorView::Contiguous(nullptr, entry.dtype, entry.shape);
    Require(view.nbytes() == entry.data_end - entry.data_begin);
    if (entry.data_begin == entry.data_end) continue;
    Require(previous == nullptr || previous->data_end <= entry.data_begin);
    previous = &entry;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int64_t data_start = 0;
  const absl::StatusOr<SafetensorsHeader> image =
      v4rl::core::ParseSafetensorsImage(absl::MakeConstSpan(data, size), &data_start);
  if (image.ok()) CheckAcceptedHeader(*image, static_cast<int64_t>(size) - data_start);

  const std::string_view json(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<SafetensorsHeader> header =
      v4rl::core::ParseSafetensorsHeader(json, kJsonOnlyDataBytes);
  if (header.ok()) CheckAcceptedHeader(*header, kJsonOnlyDataBytes);
  return 0;
}
