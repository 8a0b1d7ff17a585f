#include "rollout/weight_stream.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/dtype.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace v4rl::rollout {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// Hub names are ASCII identifiers joined by dots; anything else (spaces, quotes, control bytes,
// non-UTF-8) is refused up front, which also keeps the JSON header below trivially well-formed.
bool IsPrintableAscii(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// A tensor's element count, or -1 when it exceeds `limit` (no overflow on the way).
int64_t BoundedNumel(absl::Span<const int64_t> shape, int64_t limit) {
  int64_t numel = 1;
  for (const int64_t dim : shape) {
    if (dim == 0) return 0;
    if (numel > limit / dim) return -1;
    numel *= dim;
  }
  return numel;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightStreamAssembler>> WeightStreamAssembler::Start(
    absl::Span<const StreamTensor> tensors, int64_t max_total_bytes) {
  if (static_cast<int64_t>(tensors.size()) > kMaxStreamTensors) {
    return Invalid(absl::StrFormat("tensors: %d tensors exceed the limit of %d", tensors.size(),
                                   kMaxStreamTensors));
  }
  std::unique_ptr<WeightStreamAssembler> assembler(new WeightStreamAssembler());
  nlohmann::json header = nlohmann::json::object();
  std::set<std::string_view> seen;
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StreamTensor& tensor = tensors[i];
    if (tensor.name.empty() ||
        static_cast<int64_t>(tensor.name.size()) > kMaxStreamTensorNameBytes ||
        !IsPrintableAscii(tensor.name) || tensor.name == "__metadata__") {
      return Invalid(absl::StrFormat(
          "tensors[%d].name: \"%s\" is not 1..%d printable ASCII bytes other than __metadata__", i,
          absl::CHexEscape(tensor.name.substr(0, kMaxStreamTensorNameBytes)),
          kMaxStreamTensorNameBytes));
    }
    if (!seen.insert(tensor.name).second) {
      return Invalid(absl::StrFormat("tensors[%d].name: %s appears twice", i, tensor.name));
    }
    absl::StatusOr<core::DType> dtype = core::DTypeFromSafetensorsName(tensor.dtype);
    if (!dtype.ok()) {
      return Invalid(
          absl::StrFormat("tensors[%d].dtype (%s): %s", i, tensor.name, dtype.status().message()));
    }
    if (tensor.shape.size() > static_cast<size_t>(core::kMaxRank)) {
      return Invalid(absl::StrFormat("tensors[%d].shape (%s): rank %d above the limit of %d", i,
                                     tensor.name, tensor.shape.size(), core::kMaxRank));
    }
    for (size_t d = 0; d < tensor.shape.size(); ++d) {
      if (tensor.shape[d] < 0) {
        return Invalid(absl::StrFormat("tensors[%d].shape[%d] (%s): %d, expected >= 0", i, d,
                                       tensor.name, tensor.shape[d]));
      }
    }
    // 8 bits per element at most: elements beyond 8 x the byte budget cannot fit in it.
    const int64_t numel = BoundedNumel(tensor.shape, max_total_bytes * 8 + 8);
    const int64_t expected = numel < 0 ? -1 : core::DTypeBytes(*dtype, numel);
    if (expected < 0 || expected > max_total_bytes) {
      return Invalid(absl::StrFormat(
          "tensors[%d].shape (%s): more bytes than the limit of %d for the whole stream", i,
          tensor.name, max_total_bytes));
    }
    if (tensor.num_bytes != expected) {
      return Invalid(absl::StrFormat(
          "tensors[%d].num_bytes (%s): %d, expected %d for shape [%s] of %s", i, tensor.name,
          tensor.num_bytes, expected, absl::StrJoin(tensor.shape, ", "), tensor.dtype));
    }
    if (tensor.num_bytes > max_total_bytes - total) {
      return Invalid(absl::StrFormat(
          "tensors: the directory's bytes exceed the limit of %d (at tensors[%d], %s)",
          max_total_bytes, i, tensor.name));
    }
    header[tensor.name] = {{"dtype", tensor.dtype},
                           {"shape", tensor.shape},
                           {"data_offsets", {total, total + tensor.num_bytes}}};
    total += tensor.num_bytes;
    assembler->names_.push_back(tensor.name);
    assembler->ends_.push_back(total);
  }
  const std::string header_json =
      header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (static_cast<int64_t>(header_json.size()) > core::kMaxSafetensorsHeaderBytes) {
    return Invalid(absl::StrFormat("tensors: a directory of %d bytes exceeds the limit of %d",
                                   header_json.size(), core::kMaxSafetensorsHeaderBytes));
  }
  // The safetensors parser is the final word on the directory (its rules are the loader's).
  V4RL_RETURN_IF_ERROR(core::ParseSafetensorsHeader(header_json, total).status());

  assembler->data_start_ = 8 + header_json.size();
  assembler->image_bytes_ = assembler->data_start_ + static_cast<size_t>(total);
  assembler->image_.reset(new (std::nothrow) uint8_t[assembler->image_bytes_]);
  if (assembler->image_ == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot allocate %d bytes for the streamed weights", total));
  }
  uint64_t length = header_json.size();
  for (int i = 0; i < 8; ++i) assembler->image_[i] = static_cast<uint8_t>(length >> (8 * i));
  std::memcpy(assembler->image_.get() + 8, header_json.data(), header_json.size());
  assembler->total_bytes_ = total;
  return assembler;
}

absl::Status WeightStreamAssembler::AddChunk(std::string_view bytes) {
  if (finished_) return Invalid("data: chunk after the end of the stream");
  if (bytes.empty()) {
    return Invalid(
        absl::StrFormat("data: empty chunk after %d of %d bytes", received_bytes_, total_bytes_));
  }
  if (static_cast<int64_t>(bytes.size()) > kMaxWeightChunkBytes) {
    return Invalid(absl::StrFormat("data: chunk of %d bytes exceeds the limit of %d", bytes.size(),
                                   kMaxWeightChunkBytes));
  }
  if (static_cast<int64_t>(bytes.size()) > total_bytes_ - received_bytes_) {
    return Invalid(absl::StrFormat(
        "data: %d more bytes after %d of %d; the tensor directory declares only %d bytes",
        bytes.size(), received_bytes_, total_bytes_, total_bytes_));
  }
  std::memcpy(image_.get() + data_start_ + received_bytes_, bytes.data(), bytes.size());
  received_bytes_ += static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<core::TensorDirectory>> WeightStreamAssembler::Finish(
    const std::string& what) {
  if (finished_) return absl::FailedPreconditionError("data: Finish called twice");
  finished_ = true;
  if (received_bytes_ != total_bytes_) {
    const size_t index =
        std::upper_bound(ends_.begin(), ends_.end(), received_bytes_) - ends_.begin();
    return Invalid(absl::StrFormat(
        "data: the stream ended after %d of %d bytes; tensors[%d] (%s) and later are incomplete",
        received_bytes_, total_bytes_, index, index < names_.size() ? names_[index] : "?"));
  }
  V4RL_ASSIGN_OR_RETURN(std::unique_ptr<core::SafetensorsFile> file,
                        core::SafetensorsFile::FromImage(what, std::move(image_), image_bytes_));
  return core::TensorDirectory::FromFile(std::move(file));
}

absl::StatusOr<std::vector<StreamTensor>> MakeStreamDirectory(
    absl::Span<const core::NamedTensor> tensors) {
  std::vector<StreamTensor> directory;
  directory.reserve(tensors.size());
  for (const core::NamedTensor& named : tensors) {
    if (named.tensor.device != core::Device::kCpu) {
      return Invalid(absl::StrFormat("tensor %s is not on the CPU", named.name));
    }
    StreamTensor& tensor = directory.emplace_back();
    tensor.name = named.name;
    tensor.dtype = core::SafetensorsDTypeName(named.tensor.dtype);
    tensor.shape = named.tensor.shape_vector();
    tensor.num_bytes = named.tensor.nbytes();
  }
  return directory;
}

bool ForEachWeightChunk(absl::Span<const core::NamedTensor> tensors, int64_t chunk_bytes,
                        const std::function<bool(std::string_view chunk)>& emit) {
  chunk_bytes = std::clamp<int64_t>(chunk_bytes, 1, kMaxWeightChunkBytes);
  std::string chunk;
  chunk.reserve(static_cast<size_t>(chunk_bytes));
  for (const core::NamedTensor& named : tensors) {
    // Strided views are packed first; the hub tensors are contiguous, so this rarely copies.
    core::Tensor packed;
    const uint8_t* data = static_cast<const uint8_t*>(named.tensor.data);
    if (!named.tensor.is_contiguous()) {
      packed = core::Tensor::CopyOf(named.tensor);
      data = packed.data<uint8_t>();
    }
    int64_t remaining = named.tensor.nbytes();
    while (remaining > 0) {
      const int64_t take = std::min<int64_t>(remaining, chunk_bytes - chunk.size());
      chunk.append(reinterpret_cast<const char*>(data), static_cast<size_t>(take));
      data += take;
      remaining -= take;
      if (static_cast<int64_t>(chunk.size()) == chunk_bytes) {
        if (!emit(chunk)) return false;
        chunk.clear();
      }
    }
  }
  if (!chunk.empty() && !emit(chunk)) return false;
  return true;
}

}  // namespace v4rl::rollout
