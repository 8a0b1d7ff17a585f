// Weights sent as a stream (RolloutService.StreamWeights, protos/rollout_service.proto): a header
// (version, config.json text, tensor directory) and then the tensors' raw bytes, concatenated in
// directory order and cut into chunks of at most kMaxWeightChunkBytes. This file is the
// transport-free half: WeightStreamAssembler checks the header and the byte stream and assembles
// them into an in-memory safetensors image, read back through core::TensorDirectory, so the
// receiver loads streamed weights with the same loader (model::LoadWeights) as a directory on
// disk, and no second checkpoint parser exists. The sender's half is ForEachWeightChunk.
//
// The assembler rejects, with InvalidArgument naming the field ("tensors[3].num_bytes",
// "data", ...): more than kMaxStreamTensors tensors; a name that is empty, longer than
// kMaxStreamTensorNameBytes, not printable ASCII, or "__metadata__"; a duplicate name; an unknown
// dtype; a shape with a negative dimension or rank above core::kMaxRank; num_bytes that differs
// from shape x dtype size; totals above the caller's max_total_bytes (checked before anything is
// allocated, without overflow); an empty chunk, a chunk above kMaxWeightChunkBytes, bytes beyond
// the directory's total, and (at Finish) a stream that ended early, naming the incomplete tensor.
// Ownership: the assembler owns the image until Finish hands it to the returned directory.
// Thread-safety: one assembler per stream, used by one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace v4rl::rollout {

// The most data bytes one chunk carries: 4 MiB less 64 KiB, so a chunk message with its framing
// stays under gRPC's default 4 MiB receive limit (no channel option needed on either side).
inline constexpr int64_t kMaxWeightChunkBytes = (4 << 20) - (64 << 10);
inline constexpr int64_t kMaxStreamTensors = 1 << 18;
inline constexpr int64_t kMaxStreamTensorNameBytes = 256;

// One entry of the stream header's tensor directory.
struct StreamTensor {
  std::string name;   // hub naming (model/save.h HubNamedTensors)
  std::string dtype;  // safetensors spelling: "F32", "BF16", "I32", ...
  std::vector<int64_t> shape;
  int64_t num_bytes = 0;  // shape x dtype size
};

class WeightStreamAssembler {
 public:
  // Checks the directory `tensors` (see above) and allocates the image; max_total_bytes bounds the
  // sum of num_bytes (the caller derives it from the served model). InvalidArgument naming the
  // field; ResourceExhausted when the image cannot be allocated.
  static absl::StatusOr<std::unique_ptr<WeightStreamAssembler>> Start(
      absl::Span<const StreamTensor> tensors, int64_t max_total_bytes);

  // Appends the next bytes of the stream. InvalidArgument for an empty or oversize chunk, bytes
  // beyond the declared total, or a call after Finish.
  absl::Status AddChunk(std::string_view bytes);

  // After the last chunk: the tensors as a directory over the image (`what` names it in
  // messages). InvalidArgument when bytes are missing, naming the first incomplete tensor.
  absl::StatusOr<std::unique_ptr<core::TensorDirectory>> Finish(const std::string& what);

  int64_t total_bytes() const { return total_bytes_; }
  int64_t received_bytes() const { return received_bytes_; }

 private:
  WeightStreamAssembler() = default;

  std::vector<std::string> names_;    // directory order
  std::vector<int64_t> ends_;         // cumulative byte ends, directory order
  std::unique_ptr<uint8_t[]> image_;  // length prefix + header JSON + data
  size_t image_bytes_ = 0;
  size_t data_start_ = 0;
  int64_t total_bytes_ = 0;
  int64_t received_bytes_ = 0;
  bool finished_ = false;
};

// The sender's half: `tensors` (CPU views, any strides) as a header directory and as chunks of at
// most `chunk_bytes` (clamped to [1, kMaxWeightChunkBytes]) in the same order. emit returns
// false to stop early; ForEachWeightChunk then returns false. InvalidArgument from
// MakeStreamDirectory for a non-CPU tensor.
absl::StatusOr<std::vector<StreamTensor>> MakeStreamDirectory(
    absl::Span<const core::NamedTensor> tensors);
bool ForEachWeightChunk(absl::Span<const core::NamedTensor> tensors, int64_t chunk_bytes,
                        const std::function<bool(std::string_view chunk)>& emit);

}  // namespace v4rl::rollout
