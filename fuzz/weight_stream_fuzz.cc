// libFuzzer target for the streamed-weights assembler (rollout/weight_stream.h: the tensor
// directory of a StreamWeights header, then the data chunks). Build and run it with
// `scripts/fuzz.sh weight_stream SECONDS`.
//
// The input is decoded with FuzzedDataProvider into a byte budget, a directory of up to 8
// tensors (names, dtype spellings, shapes, byte counts; a flag per tensor makes num_bytes the
// consistent value so the fuzzer reaches the data path often, else it is arbitrary) and a
// sequence of chunks. When the assembler accepts a stream, its promises are re-checked here, so a
// wrong accept traps like a crash: every tensor is in the directory once, with its dtype and
// shape, and its bytes are exactly the ones streamed at its offset.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "rollout/weight_stream.h"

namespace {

using v4rl::rollout::StreamTensor;
using v4rl::rollout::WeightStreamAssembler;

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

constexpr const char* kDTypes[] = {"F32",     "BF16",    "F16", "F64", "I32",  "I64", "U8", "BOOL",
                                   "F8_E4M3", "F8_E8M0", "F4",  "I8",  "E8M0", "f32", "",   "F33"};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider input(data, size);
  const int64_t budget = input.ConsumeIntegralInRange<int64_t>(0, 1 << 16);
  const int num_tensors = input.ConsumeIntegralInRange(0, 8);
  std::vector<StreamTensor> directory(num_tensors);
  for (StreamTensor& tensor : directory) {
    tensor.name = input.ConsumeRandomLengthString(24);
    tensor.dtype = kDTypes[input.ConsumeIntegralInRange<size_t>(0, std::size(kDTypes) - 1)];
    const int rank = input.ConsumeIntegralInRange(0, 7);
    const bool huge = input.ConsumeBool();
    for (int d = 0; d < rank; ++d) {
      tensor.shape.push_back(huge ? input.ConsumeIntegral<int64_t>()
                                  : input.ConsumeIntegralInRange<int64_t>(-1, 12));
    }
    if (input.ConsumeBool()) {
      tensor.num_bytes = input.ConsumeIntegral<int64_t>();
    } else {
      // The consistent value, when it is computable without overflow.
      absl::StatusOr<v4rl::core::DType> dtype = v4rl::core::DTypeFromSafetensorsName(tensor.dtype);
      int64_t numel = 1;
      bool ok = dtype.ok();
      for (const int64_t dim : tensor.shape) {
        ok = ok && dim >= 0 && (dim == 0 || numel <= (int64_t{1} << 40) / dim);
        if (ok) numel *= dim;
      }
      tensor.num_bytes = ok ? v4rl::core::DTypeBytes(*dtype, numel) : -1;
    }
  }
  absl::StatusOr<std::unique_ptr<WeightStreamAssembler>> assembler =
      WeightStreamAssembler::Start(directory, budget);
  if (!assembler.ok()) return 0;
  Require((*assembler)->total_bytes() <= budget);
  std::string streamed;
  while (input.remaining_bytes() > 0) {
    const size_t length = input.ConsumeIntegralInRange<size_t>(0, 512);
    std::string chunk = input.ConsumeBytesAsString(length);
    if (!(*assembler)->AddChunk(chunk).ok()) {
      Require(chunk.empty() ||
              static_cast<int64_t>(streamed.size() + chunk.size()) > (*assembler)->total_bytes());
      return 0;
    }
    streamed += chunk;
    Require((*assembler)->received_bytes() == static_cast<int64_t>(streamed.size()));
  }
  absl::StatusOr<std::unique_ptr<v4rl::core::TensorDirectory>> tensors =
      (*assembler)->Finish("fuzz");
  if (!tensors.ok()) {
    Require(static_cast<int64_t>(streamed.size()) != (*assembler)->total_bytes());
    return 0;
  }
  Require(static_cast<int64_t>(streamed.size()) == (*assembler)->total_bytes());
  Require((*tensors)->tensors().size() == directory.size());
  int64_t offset = 0;
  for (const StreamTensor& tensor : directory) {
    const v4rl::core::TensorDirectory::Location* at = (*tensors)->Find(tensor.name);
    Require(at != nullptr);
    Require(v4rl::core::SafetensorsDTypeName(at->entry->dtype) ==
            std::string(v4rl::core::SafetensorsDTypeName(
                *v4rl::core::DTypeFromSafetensorsName(tensor.dtype))));
    Require(at->entry->shape == tensor.shape);
    Require(at->entry->data_end - at->entry->data_begin == tensor.num_bytes);
    const v4rl::core::Tensor read = at->file->Read(*at->entry);
    Require(tensor.num_bytes == 0 ||
            std::memcmp(read.data<uint8_t>(), streamed.data() + offset, tensor.num_bytes) == 0);
    offset += tensor.num_bytes;
  }
  return 0;
}
