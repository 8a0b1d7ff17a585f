// safetensors files: a validating header parser, an mmap reader, an atomic writer, and model
// directories with one file or shards listed in model.safetensors.index.json.
//
// File layout: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data region. The parser rejects, each with a message naming the tensor and the problem:
// a header length beyond the file or above 100 MB, malformed or too-deep JSON, a header that is
// not an object, a tensor that is not an object or has unknown fields, unknown dtypes, shapes that
// are not arrays of non-negative integers or have rank above kMaxRank, data_offsets that are not
// two non-negative integers, end < begin, offsets outside the data region, overlapping tensors,
// byte lengths that differ from shape x dtype size (sub-byte dtypes need a last dimension filling
// whole bytes), duplicate keys (two tensors with one name), and a __metadata__ that is not an
// object of string to string. Accepted: trailing spaces after the JSON, zero-size tensors, and
// gaps between tensors (the reference writer leaves none, but a gap loses no data; overlaps do).
// Thread-safe: a SafetensorsFile is immutable after Open.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace v4rl::core {

inline constexpr int64_t kMaxSafetensorsHeaderBytes = 100 << 20;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  int64_t data_begin = 0;  // offsets into the data region
  int64_t data_end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by data_begin
  std::map<std::string, std::string> metadata;
};

// Parses and validates a header against a data region of `data_bytes` bytes. InvalidArgument on
// any rule above.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json,
                                                         int64_t data_bytes);
// Parses a whole file image (length prefix + header + data); used by the reader and the fuzzer.
// Sets *data_start (when not null) to the offset of the data region in `image`.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsImage(absl::Span<const uint8_t> image,
                                                        int64_t* data_start);

class SafetensorsFile {
 public:
  // Maps the file read-only and validates its header; errors name `path` (NotFound when missing,
  // InvalidArgument for a bad header).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // The same over a file image already in memory (length prefix + header + data, `bytes` long),
  // which the file takes ownership of; `path` only names it in messages. Used for weights that
  // arrive over the network (rollout/weight_stream.h). InvalidArgument for a bad header.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromImage(
      std::string path, std::unique_ptr<uint8_t[]> image, size_t bytes);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const SafetensorsEntry* Find(std::string_view name) const;
  // Read-only view into the mapping (may be unaligned for its dtype: use Read to compute).
  TensorView View(const SafetensorsEntry& entry) const;
  // Aligned contiguous copy of the tensor's bytes.
  Tensor Read(const SafetensorsEntry& entry) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
  const uint8_t* mapping_ = nullptr;  // mmapped, or owned_image_
  size_t mapping_bytes_ = 0;
  std::unique_ptr<uint8_t[]> owned_image_;  // FromImage's buffer; null for a mapping
  int64_t data_start_ = 0;
};

struct NamedTensor {
  std::string name;
  TensorView tensor;  // CPU, any strides
};

// Writes tensors (in the given order, strided views packed contiguously) atomically: a temporary
// file in the same directory is fsynced and renamed over `path`. The header is padded with spaces
// so the data region starts 8-byte aligned. InvalidArgument on duplicate names, the reserved name
// __metadata__, names or metadata that are not UTF-8, non-CPU tensors and strided fp4 views.
absl::Status WriteSafetensors(const std::string& path, absl::Span<const NamedTensor> tensors,
                              const std::map<std::string, std::string>& metadata = {});

// A model directory's tensors: model.safetensors.index.json with shards, or every *.safetensors
// file in the directory, or a single .safetensors path.
class TensorDirectory {
 public:
  // With an index only the shards it names are read, and every tensor it maps must be in its
  // shard. Errors: NotFound for a missing path, no safetensors files, or an index naming a missing
  // shard; InvalidArgument for an index that is not {"weight_map": {name: file}} or names a file
  // outside the directory, the same tensor in two files, and any shard's header error.
  static absl::StatusOr<std::unique_ptr<TensorDirectory>> Open(const std::string& path);
  // A directory of one already-open file (e.g. SafetensorsFile::FromImage).
  static std::unique_ptr<TensorDirectory> FromFile(std::unique_ptr<SafetensorsFile> file);

  struct Location {
    const SafetensorsFile* file;
    const SafetensorsEntry* entry;
  };
  // Sorted by name.
  const std::map<std::string, Location, std::less<>>& tensors() const { return tensors_; }
  const Location* Find(std::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Location, std::less<>> tensors_;
};

// Writes `tensors` into `directory` as model-0000i-of-0000n.safetensors shards of at most
// `max_shard_bytes` each (a larger tensor gets a shard of its own) plus
// model.safetensors.index.json with metadata.total_size; one shard is written as
// model.safetensors, and a stale index that would shadow it is removed. Errors as
// WriteSafetensors, checked across all shards, and InvalidArgument for max_shard_bytes <= 0.
absl::Status WriteShardedSafetensors(const std::string& directory,
                                     absl::Span<const NamedTensor> tensors,
                                     int64_t max_shard_bytes);

}  // namespace v4rl::core
