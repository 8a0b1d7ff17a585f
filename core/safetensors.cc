// safetensors: header validation, the mmap reader, the streaming atomic writer and model
// directories (see core/safetensors.h for the format and the rules).
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <system_error>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/file.h"
#include "core/json.h"
#include "core/status.h"

namespace v4rl::core {
namespace {

using Json = nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";
constexpr char kIndexFileName[] = "model.safetensors.index.json";
constexpr char kSingleFileName[] = "model.safetensors";
constexpr char kSafetensorsExtension[] = ".safetensors";
// A valid header nests three levels (header object, tensor object, shape array); the bound only
// has to stop hostile nesting early.
constexpr int kMaxHeaderJsonDepth = 8;
// Names and values quoted in error messages are cut here: a header can hold megabyte-long keys.
constexpr size_t kMaxQuotedChars = 120;

// ---- error-message helpers ----

std::string Quote(std::string_view text) {
  if (text.size() <= kMaxQuotedChars) return absl::StrFormat("'%s'", std::string(text));
  return absl::StrFormat("'%s...' (%d bytes)", std::string(text.substr(0, kMaxQuotedChars)),
                         text.size());
}

// Compact text of a JSON value for messages; `replace` keeps dump() from throwing.
std::string Excerpt(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > kMaxQuotedChars) text = text.substr(0, kMaxQuotedChars) + "...";
  return text;
}

std::string ShapeString(const Shape& shape) { return "[" + absl::StrJoin(shape, ", ") + "]"; }

absl::Status TensorError(std::string_view name, const std::string& problem) {
  return absl::InvalidArgumentError(
      absl::StrFormat("safetensors header: tensor %s: %s", Quote(name), problem));
}

// Adds `prefix` to a status message, keeping its code.
absl::Status Annotate(const absl::Status& status, const std::string& prefix) {
  return absl::Status(status.code(), prefix + std::string(status.message()));
}

absl::Status ErrnoError(int error_number, const std::string& action, const std::string& path) {
  return absl::ErrnoToStatus(error_number, absl::StrFormat("%s %s", action, path));
}

// ---- header parsing ----

// nlohmann keeps the last of several equal keys without a word, which would let one tensor
// silently shadow another. This SAX pass over the (already parsed, so valid and depth-bounded)
// text reports the first key that repeats within one object.
class DuplicateKeyFinder : public nlohmann::json_sax<Json> {
 public:
  const std::optional<std::string>& error() const { return error_; }

  bool start_object(std::size_t) override {
    frames_.push_back({/*is_object=*/true, ChildName(), {}});
    return true;
  }
  bool start_array(std::size_t) override {
    frames_.push_back({/*is_object=*/false, ChildName(), {}});
    return true;
  }
  bool end_object() override { return Pop(); }
  bool end_array() override { return Pop(); }
  bool key(string_t& key) override {
    Frame& frame = frames_.back();
    if (!frame.keys.insert(key).second) {
      error_ = frames_.size() == 1
                   ? absl::StrFormat("duplicate tensor name %s", Quote(key))
                   : absl::StrFormat("duplicate key %s inside %s", Quote(key), Quote(frame.name));
      return false;
    }
    last_key_ = key;
    return true;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }

 private:
  struct Frame {
    bool is_object;
    std::string name;  // the key this container sits under, for messages
    std::set<std::string> keys;
  };
  std::string ChildName() const {
    if (frames_.empty()) return "header";
    return frames_.back().is_object ? last_key_ : frames_.back().name;
  }
  bool Pop() {
    frames_.pop_back();
    return true;
  }

  std::vector<Frame> frames_;
  std::string last_key_;
  std::optional<std::string> error_;
};

absl::Status CheckNoDuplicateKeys(std::string_view header_json) {
  DuplicateKeyFinder finder;
  Json::sax_parse(header_json.data(), header_json.data() + header_json.size(), &finder);
  if (finder.error().has_value()) {
    return absl::InvalidArgumentError("safetensors header: " + *finder.error());
  }
  return absl::OkStatus();
}

// A JSON integer in [0, INT64_MAX]; nullopt for anything else (negative, float, non-number).
std::optional<int64_t> NonNegativeInt(const Json& value) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (value.is_number_integer()) {
    const int64_t v = value.get<int64_t>();
    if (v < 0) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

absl::StatusOr<DType> ParseEntryDType(const std::string& name, const Json& entry) {
  const auto it = entry.find("dtype");
  if (it == entry.end()) return TensorError(name, "missing field 'dtype'");
  if (!it->is_string()) {
    return TensorError(name, "field 'dtype' must be a string, got " + Excerpt(*it));
  }
  absl::StatusOr<DType> dtype = DTypeFromSafetensorsName(it->get_ref<const std::string&>());
  if (!dtype.ok()) return TensorError(name, std::string(dtype.status().message()));
  return dtype;
}

absl::StatusOr<Shape> ParseEntryShape(const std::string& name, const Json& entry) {
  const auto it = entry.find("shape");
  if (it == entry.end()) return TensorError(name, "missing field 'shape'");
  if (!it->is_array()) {
    return TensorError(
        name, "field 'shape' must be an array of non-negative integers, got " + Excerpt(*it));
  }
  if (it->size() > static_cast<size_t>(kMaxRank)) {
    return TensorError(name, absl::StrFormat("shape %s has rank %d, above the maximum %d",
                                             Excerpt(*it), it->size(), kMaxRank));
  }
  Shape shape;
  for (const Json& dim : *it) {
    const std::optional<int64_t> size = NonNegativeInt(dim);
    if (!size.has_value()) {
      return TensorError(
          name, "field 'shape' must be an array of non-negative integers, got " + Excerpt(*it));
    }
    shape.push_back(*size);
  }
  return shape;
}

absl::StatusOr<std::pair<int64_t, int64_t>> ParseEntryOffsets(const std::string& name,
                                                              const Json& entry,
                                                              int64_t data_bytes) {
  const auto it = entry.find("data_offsets");
  if (it == entry.end()) return TensorError(name, "missing field 'data_offsets'");
  std::optional<int64_t> begin, end;
  if (it->is_array() && it->size() == 2) {
    begin = NonNegativeInt((*it)[0]);
    end = NonNegativeInt((*it)[1]);
  }
  if (!begin.has_value() || !end.has_value()) {
    return TensorError(name,
                       "field 'data_offsets' must be [begin, end] with two non-negative "
                       "integers, got " +
                           Excerpt(*it));
  }
  if (*end < *begin) {
    return TensorError(name,
                       absl::StrFormat("data_offsets end %d is before begin %d", *end, *begin));
  }
  if (*end > data_bytes) {
    return TensorError(name, absl::StrFormat("data_offsets [%d, %d] exceed the data region of "
                                             "%d bytes",
                                             *begin, *end, data_bytes));
  }
  return std::make_pair(*begin, *end);
}

// Bytes that `shape` x `dtype` needs, refusing element counts that overflow int64.
absl::StatusOr<int64_t> ExpectedBytes(const std::string& name, DType dtype, const Shape& shape) {
  int64_t numel = 1;
  for (const int64_t size : shape) {
    if (__builtin_mul_overflow(numel, size, &numel)) {
      return TensorError(name, "shape " + ShapeString(shape) + " has more elements than int64");
    }
  }
  int64_t bits = 0;
  if (__builtin_mul_overflow(numel, int64_t{DTypeBits(dtype)}, &bits)) {
    return TensorError(name, "shape " + ShapeString(shape) + " is too large for its dtype");
  }
  // Sub-byte types pack along the last dimension (tensor.h), so it must fill whole bytes.
  if (DTypeBits(dtype) < 8 && (shape.empty() || shape.back() % (8 / DTypeBits(dtype)) != 0)) {
    return TensorError(name, absl::StrFormat("%s needs a last dimension that fills whole bytes, "
                                             "got shape %s",
                                             DTypeName(dtype), ShapeString(shape)));
  }
  return DTypeBytes(dtype, numel);
}

absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name, const Json& entry,
                                            int64_t data_bytes) {
  if (!entry.is_object()) {
    return TensorError(
        name, "must be an object with dtype, shape and data_offsets, got " + Excerpt(entry));
  }
  for (const auto& [key, unused] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return TensorError(
          name, "unknown field " + Quote(key) + " (expected dtype, shape and data_offsets)");
    }
  }
  SafetensorsEntry result;
  result.name = name;
  V4RL_ASSIGN_OR_RETURN(result.dtype, ParseEntryDType(name, entry));
  V4RL_ASSIGN_OR_RETURN(result.shape, ParseEntryShape(name, entry));
  V4RL_ASSIGN_OR_RETURN(const auto offsets, ParseEntryOffsets(name, entry, data_bytes));
  result.data_begin = offsets.first;
  result.data_end = offsets.second;
  V4RL_ASSIGN_OR_RETURN(const int64_t expected, ExpectedBytes(name, result.dtype, result.shape));
  if (expected != result.data_end - result.data_begin) {
    return TensorError(name, absl::StrFormat("shape %s x %s is %d bytes but data_offsets [%d, %d] "
                                             "span %d",
                                             ShapeString(result.shape), DTypeName(result.dtype),
                                             expected, result.data_begin, result.data_end,
                                             result.data_end - result.data_begin));
  }
  return result;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const Json& value) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        "safetensors header: __metadata__ must be an object of "
        "string to string, got " +
        Excerpt(value));
  }
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("safetensors header: __metadata__ value of %s must be a string, got %s",
                          Quote(key), Excerpt(item)));
    }
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

// Sorts by offset and rejects two non-empty ranges that share a byte. Gaps between tensors are
// accepted: they lose nothing, and the writer never makes them. Empty tensors own no bytes, so
// they may sit anywhere inside the data region. Once sorted, a range that overlaps any earlier one
// also overlaps the previous non-empty one, so comparing neighbours is enough.
absl::Status SortAndCheckOverlaps(std::vector<SafetensorsEntry>& entries) {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
  });
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& entry : entries) {
    if (entry.data_begin == entry.data_end) continue;
    if (previous != nullptr && entry.data_begin < previous->data_end) {
      return absl::InvalidArgumentError(
          absl::StrFormat("safetensors header: tensors %s [%d, %d) and %s [%d, %d) overlap",
                          Quote(previous->name), previous->data_begin, previous->data_end,
                          Quote(entry.name), entry.data_begin, entry.data_end));
    }
    previous = &entry;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json,
                                                         int64_t data_bytes) {
  if (data_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("safetensors: data region of %d bytes is negative", data_bytes));
  }
  JsonLimits limits;
  limits.max_bytes = kMaxSafetensorsHeaderBytes;
  limits.max_depth = kMaxHeaderJsonDepth;
  V4RL_ASSIGN_OR_RETURN(const Json root, ParseJson(header_json, "safetensors header", limits));
  if (!root.is_object()) {
    return absl::InvalidArgumentError("safetensors header: must be a JSON object of tensors, got " +
                                      Excerpt(root));
  }
  V4RL_RETURN_IF_ERROR(CheckNoDuplicateKeys(header_json));
  SafetensorsHeader header;
  header.entries.reserve(root.size());
  for (const auto& [name, value] : root.items()) {
    if (name == kMetadataKey) {
      V4RL_ASSIGN_OR_RETURN(header.metadata, ParseMetadata(value));
      continue;
    }
    V4RL_ASSIGN_OR_RETURN(SafetensorsEntry entry, ParseEntry(name, value, data_bytes));
    header.entries.push_back(std::move(entry));
  }
  V4RL_RETURN_IF_ERROR(SortAndCheckOverlaps(header.entries));
  return header;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsImage(absl::Span<const uint8_t> image,
                                                        int64_t* data_start) {
  if (image.size() < 8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "safetensors: %d bytes is too short for the 8-byte header length", image.size()));
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | image[i];  // little-endian
  if (header_bytes > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("safetensors: header length %d is above the limit of %d bytes",
                        header_bytes, kMaxSafetensorsHeaderBytes));
  }
  if (header_bytes > image.size() - 8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "safetensors: header length %d is beyond the file, which has %d bytes after the length",
        header_bytes, image.size() - 8));
  }
  const std::string_view header_json(reinterpret_cast<const char*>(image.data()) + 8, header_bytes);
  const int64_t start = 8 + static_cast<int64_t>(header_bytes);
  V4RL_ASSIGN_OR_RETURN(
      SafetensorsHeader header,
      ParseSafetensorsHeader(header_json, static_cast<int64_t>(image.size()) - start));
  if (data_start != nullptr) *data_start = start;
  return header;
}

// ---- reader ----

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open safetensors file", path);
  struct stat info;
  if (fstat(fd, &info) != 0) {
    const int error_number = errno;
    close(fd);
    return ErrnoError(error_number, "cannot stat", path);
  }
  if (!S_ISREG(info.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(path + ": not a regular file");
  }
  if (info.st_size < 8) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: safetensors: %d bytes is too short for the 8-byte header length", path, info.st_size));
  }
  const size_t bytes = static_cast<size_t>(info.st_size);
  void* mapping = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) return ErrnoError(mmap_errno, "cannot mmap", path);

  // The destructor unmaps from here on, also when the header is rejected.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = static_cast<const uint8_t*>(mapping);
  file->mapping_bytes_ = bytes;
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsImage(absl::MakeConstSpan(file->mapping_, bytes), &file->data_start_);
  if (!header.ok()) return Annotate(header.status(), path + ": ");
  file->header_ = *std::move(header);
  for (size_t i = 0; i < file->header_.entries.size(); ++i) {
    file->index_.emplace(file->header_.entries[i].name, i);
  }
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromImage(
    std::string path, std::unique_ptr<uint8_t[]> image, size_t bytes) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::move(path);
  file->owned_image_ = std::move(image);
  file->mapping_ = file->owned_image_.get();
  file->mapping_bytes_ = bytes;
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsImage(absl::MakeConstSpan(file->mapping_, bytes), &file->data_start_);
  if (!header.ok()) return Annotate(header.status(), file->path_ + ": ");
  file->header_ = *std::move(header);
  for (size_t i = 0; i < file->header_.entries.size(); ++i) {
    file->index_.emplace(file->header_.entries[i].name, i);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr && owned_image_ == nullptr) {
    munmap(const_cast<uint8_t*>(mapping_), mapping_bytes_);
  }
}

const SafetensorsEntry* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.entries[it->second];
}

TensorView SafetensorsFile::View(const SafetensorsEntry& entry) const {
  // The mapping is PROT_READ: writing through this view faults, as the header promises.
  auto* data = const_cast<uint8_t*>(mapping_ + data_start_ + entry.data_begin);
  return TensorView::Contiguous(data, entry.dtype, entry.shape);
}

Tensor SafetensorsFile::Read(const SafetensorsEntry& entry) const {
  Tensor tensor = Tensor::Empty(entry.dtype, entry.shape);
  const int64_t bytes = entry.data_end - entry.data_begin;
  if (bytes > 0)
    std::memcpy(tensor.data<uint8_t>(), mapping_ + data_start_ + entry.data_begin, bytes);
  return tensor;
}

// ---- writer ----

namespace {

// The header is JSON, whose strings must be UTF-8; nlohmann's dump() would throw on anything
// else, so names and metadata are checked first.
bool IsValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<uint8_t>(text[i]);
    int length = 0;
    uint32_t code_point = 0;
    if (byte < 0x80) {
      ++i;
      continue;
    }
    if ((byte & 0xE0) == 0xC0) {
      length = 2;
      code_point = byte & 0x1F;
    } else if ((byte & 0xF0) == 0xE0) {
      length = 3;
      code_point = byte & 0x0F;
    } else if ((byte & 0xF8) == 0xF0) {
      length = 4;
      code_point = byte & 0x07;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (int k = 1; k < length; ++k) {
      const auto next = static_cast<uint8_t>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (next & 0x3F);
    }
    // Overlong encodings, UTF-16 surrogates and code points past U+10FFFF are not UTF-8.
    static constexpr uint32_t kMinCodePoint[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (code_point < kMinCodePoint[length] || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return false;
    }
    i += length;
  }
  return true;
}

absl::Status CheckWritable(absl::Span<const NamedTensor> tensors,
                           const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  for (const NamedTensor& named : tensors) {
    if (!names.insert(named.name).second) {
      return absl::InvalidArgumentError("WriteSafetensors: duplicate tensor name " +
                                        Quote(named.name));
    }
    if (named.name == kMetadataKey) {
      return absl::InvalidArgumentError(
          "WriteSafetensors: '__metadata__' is reserved and cannot "
          "name a tensor");
    }
    if (!IsValidUtf8(named.name)) {
      return absl::InvalidArgumentError("WriteSafetensors: tensor name " + Quote(named.name) +
                                        " is not valid UTF-8");
    }
    if (named.tensor.device != Device::kCpu) {
      return absl::InvalidArgumentError("WriteSafetensors: tensor " + Quote(named.name) +
                                        " is not in CPU memory");
    }
    if (named.tensor.dtype == DType::kF4E2M1 && !named.tensor.is_contiguous()) {
      return absl::InvalidArgumentError("WriteSafetensors: tensor " + Quote(named.name) +
                                        " is a strided view of packed fp4, which cannot be packed");
    }
  }
  for (const auto& [key, value] : metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
      return absl::InvalidArgumentError("WriteSafetensors: metadata entry " + Quote(key) +
                                        " is not valid UTF-8");
    }
  }
  return absl::OkStatus();
}

// The header JSON (metadata first, then tensors in file order, as the Hugging Face writer does),
// padded with spaces so the data region starts 8-byte aligned.
std::string BuildHeader(absl::Span<const NamedTensor> tensors,
                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  int64_t offset = 0;
  for (const NamedTensor& named : tensors) {
    const int64_t bytes = named.tensor.nbytes();
    header[named.name] = {{"dtype", SafetensorsDTypeName(named.tensor.dtype)},
                          {"shape", named.tensor.shape_vector()},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

absl::Status WriteAll(int fd, const void* data, size_t bytes, const std::string& path) {
  const auto* cursor = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    // Linux writes at most ~2 GiB per call.
    const ssize_t written = write(fd, cursor, std::min<size_t>(bytes, size_t{1} << 30));
    if (written < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot write", path);
    }
    cursor += written;
    bytes -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

absl::Status WriteTensorData(int fd, const TensorView& tensor, const std::string& path) {
  if (tensor.numel() == 0) return absl::OkStatus();
  if (tensor.is_contiguous()) return WriteAll(fd, tensor.data, tensor.nbytes(), path);
  // Strided views (transposes, slices) are packed one tensor at a time.
  const Tensor packed = Tensor::CopyOf(tensor);
  return WriteAll(fd, packed.view().data, packed.view().nbytes(), path);
}

absl::Status WriteContents(int fd, const std::string& header, absl::Span<const NamedTensor> tensors,
                           const std::string& path) {
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  V4RL_RETURN_IF_ERROR(WriteAll(fd, length, sizeof(length), path));
  V4RL_RETURN_IF_ERROR(WriteAll(fd, header.data(), header.size(), path));
  for (const NamedTensor& named : tensors) {
    V4RL_RETURN_IF_ERROR(WriteTensorData(fd, named.tensor, path));
  }
  if (fsync(fd) != 0) return ErrnoError(errno, "cannot fsync", path);
  return absl::OkStatus();
}

// Makes a completed rename survive a crash.
void SyncParentDirectory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const int fd = open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // the data is written and renamed; only durability is weaker
  fsync(fd);
  close(fd);
}

std::string ShardFileName(int shard, int num_shards) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", shard, num_shards);
}

std::string JoinPath(const std::string& directory, const std::string& name) {
  return (std::filesystem::path(directory) / name).string();
}

// Consecutive runs of `tensors` holding at most `max_shard_bytes` each (a larger tensor gets a
// shard of its own).
std::vector<absl::Span<const NamedTensor>> SplitIntoShards(absl::Span<const NamedTensor> tensors,
                                                           int64_t max_shard_bytes) {
  std::vector<absl::Span<const NamedTensor>> shards;
  size_t first = 0;
  int64_t shard_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t bytes = tensors[i].tensor.nbytes();
    if (i > first && shard_bytes + bytes > max_shard_bytes) {
      shards.push_back(tensors.subspan(first, i - first));
      first = i;
      shard_bytes = 0;
    }
    shard_bytes += bytes;
  }
  shards.push_back(tensors.subspan(first));
  return shards;
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, absl::Span<const NamedTensor> tensors,
                              const std::map<std::string, std::string>& metadata) {
  V4RL_RETURN_IF_ERROR(Annotate(CheckWritable(tensors, metadata), path + ": "));
  const std::string header = BuildHeader(tensors, metadata);
  const std::string temp_path = absl::StrFormat("%s.tmp.%d", path, getpid());
  const int fd = open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, "cannot create", temp_path);
  absl::Status status = WriteContents(fd, header, tensors, temp_path);
  if (close(fd) != 0 && status.ok()) status = ErrnoError(errno, "cannot close", temp_path);
  if (status.ok() && rename(temp_path.c_str(), path.c_str()) != 0) {
    status = ErrnoError(errno, "cannot rename " + temp_path + " to", path);
  }
  if (!status.ok()) {
    unlink(temp_path.c_str());
    return status;
  }
  SyncParentDirectory(path);
  return absl::OkStatus();
}

absl::Status WriteShardedSafetensors(const std::string& directory,
                                     absl::Span<const NamedTensor> tensors,
                                     int64_t max_shard_bytes) {
  if (max_shard_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "WriteShardedSafetensors: max_shard_bytes %d must be positive", max_shard_bytes));
  }
  // Checked across all shards up front: a name repeated in two shards would corrupt the index.
  V4RL_RETURN_IF_ERROR(Annotate(CheckWritable(tensors, {}), directory + ": "));
  const std::string index_path = JoinPath(directory, kIndexFileName);
  const std::vector<absl::Span<const NamedTensor>> shards =
      SplitIntoShards(tensors, max_shard_bytes);
  if (shards.size() == 1) {
    V4RL_RETURN_IF_ERROR(WriteSafetensors(JoinPath(directory, kSingleFileName), tensors));
    // An index left by an earlier sharded write would shadow the new file.
    if (unlink(index_path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(errno, "cannot remove stale", index_path);
    }
    return absl::OkStatus();
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  int64_t total_bytes = 0;
  const int num_shards = static_cast<int>(shards.size());
  for (int shard = 0; shard < num_shards; ++shard) {
    const std::string file_name = ShardFileName(shard + 1, num_shards);
    V4RL_RETURN_IF_ERROR(WriteSafetensors(JoinPath(directory, file_name), shards[shard]));
    for (const NamedTensor& named : shards[shard]) {
      weight_map[named.name] = file_name;
      total_bytes += named.tensor.nbytes();
    }
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes}}},
                                  {"weight_map", std::move(weight_map)}};
  // Names are valid UTF-8 (WriteSafetensors checked them), so dump() cannot throw.
  return WriteFileAtomic(index_path, index.dump(2) + "\n");
}

// ---- model directories ----

namespace {

// The shard files an index names, checked to be plain file names inside the directory.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& index_path) {
  V4RL_ASSIGN_OR_RETURN(const Json index, ReadJsonFile(index_path));
  const auto weight_map = index.is_object() ? index.find("weight_map") : index.end();
  if (weight_map == index.end() || !weight_map->is_object()) {
    return absl::InvalidArgumentError(index_path +
                                      ": expected an object with a 'weight_map' "
                                      "object of tensor name to shard file");
  }
  std::map<std::string, std::string> result;
  for (const auto& [name, file] : weight_map->items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: weight_map[%s] must be a shard file name, got %s", index_path,
                          Quote(name), Excerpt(file)));
    }
    const std::string& file_name = file.get_ref<const std::string&>();
    if (file_name.empty() || file_name == "." || file_name == ".." ||
        file_name.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: weight_map[%s] = %s is not a file name inside the directory",
                          index_path, Quote(name), Quote(file_name)));
    }
    result.emplace(name, file_name);
  }
  return result;
}

// Every regular *.safetensors file in `directory`, sorted by name.
absl::StatusOr<std::vector<std::string>> ListSafetensorsFiles(const std::string& directory) {
  std::error_code error;
  std::filesystem::directory_iterator it(directory, error);
  std::vector<std::string> paths;
  for (; !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    const std::filesystem::path& path = it->path();
    if (path.extension() == kSafetensorsExtension &&
        std::filesystem::is_regular_file(path, error)) {
      paths.push_back(path.string());
    }
  }
  if (error) {
    return absl::Status(absl::ErrnoToStatusCode(error.value()),
                        "cannot list " + directory + ": " + error.message());
  }
  if (paths.empty()) return absl::NotFoundError("no .safetensors files in " + directory);
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TensorDirectory>> TensorDirectory::Open(const std::string& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError("no safetensors file or model directory at " + path);
  }
  auto directory = std::make_unique<TensorDirectory>();
  std::vector<std::string> paths;
  std::optional<std::map<std::string, std::string>> weight_map;
  const std::string index_path = JoinPath(path, kIndexFileName);
  if (!std::filesystem::is_directory(status)) {
    paths.push_back(path);
  } else if (std::filesystem::exists(index_path, error)) {
    V4RL_ASSIGN_OR_RETURN(weight_map, ReadWeightMap(index_path));
    std::set<std::string> shard_names;
    for (const auto& [name, file_name] : *weight_map) shard_names.insert(file_name);
    for (const std::string& file_name : shard_names) paths.push_back(JoinPath(path, file_name));
  } else {
    V4RL_ASSIGN_OR_RETURN(paths, ListSafetensorsFiles(path));
  }

  for (const std::string& file_path : paths) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(file_path);
    if (!file.ok() && weight_map.has_value()) {
      return Annotate(file.status(), index_path + " names a shard that cannot be read: ");
    }
    V4RL_RETURN_IF_ERROR(file.status());
    for (const SafetensorsEntry& entry : (*file)->entries()) {
      const auto [it, inserted] =
          directory->tensors_.emplace(entry.name, Location{file->get(), &entry});
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrFormat("tensor %s is in both %s and %s",
                                                          Quote(entry.name),
                                                          it->second.file->path(), file_path));
      }
    }
    directory->files_.push_back(*std::move(file));
  }

  if (weight_map.has_value()) {
    for (const auto& [name, file_name] : *weight_map) {
      const Location* location = directory->Find(name);
      if (location == nullptr || location->file->path() != JoinPath(path, file_name)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s maps tensor %s to %s, which does not contain it", index_path,
                            Quote(name), file_name));
      }
    }
  }
  return directory;
}

std::unique_ptr<TensorDirectory> TensorDirectory::FromFile(std::unique_ptr<SafetensorsFile> file) {
  auto directory = std::make_unique<TensorDirectory>();
  // A file's header has no duplicate names, so every emplace inserts.
  for (const SafetensorsEntry& entry : file->entries()) {
    directory->tensors_.emplace(entry.name, Location{file.get(), &entry});
  }
  directory->files_.push_back(std::move(file));
  return directory;
}

const TensorDirectory::Location* TensorDirectory::Find(std::string_view name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace v4rl::core
