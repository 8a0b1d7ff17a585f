// Tests for core/safetensors.h: writer/reader round trips, sharded model directories, and one
// hand-written malformed file per header rule, each rejected with a message naming the problem.
#include "core/safetensors.h"

#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/file.h"
#include "core/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::core {
namespace {

using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::v4rl::testing::StatusIs;

// A fresh directory per test, so tests can run in parallel under ctest.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/safetensors_test.XXXXXX";
    V4RL_CHECK(mkdtemp(pattern.data()) != nullptr) << "mkdtemp " << pattern;
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> List() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

// A tensor whose bytes are 0, 1, 2, ... (offset by `seed`), so any misplaced byte shows.
Tensor PatternTensor(DType dtype, const Shape& shape, int seed) {
  Tensor tensor = Tensor::Empty(dtype, shape);
  auto* bytes = tensor.data<uint8_t>();
  for (int64_t i = 0; i < tensor.view().nbytes(); ++i) bytes[i] = static_cast<uint8_t>(i + seed);
  return tensor;
}

std::vector<uint8_t> Bytes(const TensorView& view) {
  const auto* data = static_cast<const uint8_t*>(view.data);
  return std::vector<uint8_t>(data, data + view.nbytes());
}

// Length prefix + header + data, written by hand so malformed files can be built.
std::string Image(const std::string& header, const std::string& data = "") {
  std::string image(8, '\0');
  for (int i = 0; i < 8; ++i) image[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
  return image + header + data;
}

absl::StatusOr<SafetensorsHeader> ParseImage(const std::string& image) {
  return ParseSafetensorsImage(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(image.data()), image.size()), nullptr);
}

std::string ReadAll(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(stream), {});
}

TEST(SafetensorsTest, RoundTripKeepsDTypesShapesBytesAndOrder) {
  TempDir dir;
  const std::vector<Tensor> tensors = {
      PatternTensor(DType::kF32, {2, 3}, 1),    PatternTensor(DType::kBF16, {5}, 2),
      PatternTensor(DType::kF8E4M3, {3, 7}, 3), PatternTensor(DType::kI64, {2}, 4),
      PatternTensor(DType::kF32, {0, 4}, 5),    PatternTensor(DType::kF32, {}, 6),
      PatternTensor(DType::kF4E2M1, {2, 6}, 7), PatternTensor(DType::kF8E8M0, {3}, 8),
  };
  const std::vector<std::string> names = {"w.f32", "b.bf16", "q.fp8",       "ids",
                                          "empty", "scalar", "experts.fp4", "scale"};
  std::vector<NamedTensor> named;
  for (size_t i = 0; i < tensors.size(); ++i) named.push_back({names[i], tensors[i].view()});
  const std::string path = dir.Join("model.safetensors");
  V4RL_ASSERT_OK(WriteSafetensors(path, named, {{"format", "pt"}}));
  EXPECT_THAT(dir.List(), ElementsAre("model.safetensors"));  // no temp file left behind

  V4RL_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(file->entries().size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    // Entries come back sorted by offset, which is the order they were given in.
    const SafetensorsEntry& entry = file->entries()[i];
    EXPECT_EQ(entry.name, names[i]);
    EXPECT_EQ(file->Find(names[i]), &entry);
    EXPECT_EQ(entry.dtype, tensors[i].dtype());
    EXPECT_EQ(entry.shape, tensors[i].view().shape_vector());
    EXPECT_EQ(Bytes(file->View(entry)), Bytes(tensors[i].view()));
    const Tensor copy = file->Read(entry);
    EXPECT_EQ(copy.view().shape_vector(), tensors[i].view().shape_vector());
    EXPECT_EQ(Bytes(copy.view()), Bytes(tensors[i].view()));
  }
  EXPECT_EQ(file->Find("missing"), nullptr);

  // The data region starts 8-byte aligned: the header is padded with spaces.
  const std::string image = ReadAll(path);
  int64_t data_start = 0;
  V4RL_ASSERT_OK(ParseSafetensorsImage(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(image.data()), image.size()),
      &data_start));
  EXPECT_EQ(data_start % 8, 0);
  EXPECT_THAT(image[data_start - 1], AnyOf(' ', '}'));
}

TEST(SafetensorsTest, StridedViewIsWrittenContiguously) {
  TempDir dir;
  const Tensor matrix = Tensor::FromFloats({2, 3}, {0, 1, 2, 3, 4, 5});
  const NamedTensor named[] = {{"t", matrix.view().Transpose(0, 1)}};
  V4RL_ASSERT_OK(WriteSafetensors(dir.Join("t.safetensors"), named));
  V4RL_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir.Join("t.safetensors")));
  const Tensor read = file->Read(file->entries()[0]);
  EXPECT_EQ(read.view().shape_vector(), (Shape{3, 2}));
  EXPECT_THAT(read.ToFloatVector(), ElementsAre(0, 3, 1, 4, 2, 5));
}

TEST(SafetensorsTest, WriterRejectsBadNamesAndKeepsTheOldFile) {
  TempDir dir;
  const std::string path = dir.Join("m.safetensors");
  const Tensor a = Tensor::FromFloats({1}, {1});
  const NamedTensor good[] = {{"a", a.view()}};
  V4RL_ASSERT_OK(WriteSafetensors(path, good));
  const std::string before = ReadAll(path);

  const NamedTensor duplicate[] = {{"a", a.view()}, {"a", a.view()}};
  EXPECT_THAT(WriteSafetensors(path, duplicate),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate tensor name 'a'")));
  const NamedTensor reserved[] = {{"__metadata__", a.view()}};
  EXPECT_THAT(WriteSafetensors(path, reserved),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("reserved")));
  const NamedTensor not_utf8[] = {{"bad\xff", a.view()}};
  EXPECT_THAT(WriteSafetensors(path, not_utf8),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not valid UTF-8")));
  EXPECT_EQ(ReadAll(path), before);
  EXPECT_THAT(dir.List(), ElementsAre("m.safetensors"));
}

// ---- model directories ----

std::vector<Tensor> SmallTensors() {
  std::vector<Tensor> tensors;
  for (int i = 0; i < 5; ++i) tensors.push_back(PatternTensor(DType::kBF16, {4, 8}, i));  // 64 B
  return tensors;
}

std::vector<NamedTensor> Named(const std::vector<Tensor>& tensors) {
  std::vector<NamedTensor> named;
  for (size_t i = 0; i < tensors.size(); ++i) {
    named.push_back({absl::StrFormat("layers.%d.weight", i), tensors[i].view()});
  }
  return named;
}

TEST(TensorDirectoryTest, ShardedRoundTripThroughTheIndex) {
  TempDir dir;
  const std::vector<Tensor> tensors = SmallTensors();
  const std::vector<NamedTensor> named = Named(tensors);
  V4RL_ASSERT_OK(WriteShardedSafetensors(dir.path(), named, /*max_shard_bytes=*/130));
  EXPECT_THAT(dir.List(),
              ElementsAre("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                          "model-00003-of-00003.safetensors", "model.safetensors.index.json"));
  V4RL_ASSERT_OK_AND_ASSIGN(const nlohmann::json index,
                            ReadJsonFile(dir.Join("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"], 5 * 64);
  EXPECT_EQ(index["weight_map"]["layers.4.weight"], "model-00003-of-00003.safetensors");

  V4RL_ASSERT_OK_AND_ASSIGN(auto directory, TensorDirectory::Open(dir.path()));
  EXPECT_EQ(directory->files().size(), 3u);
  ASSERT_EQ(directory->tensors().size(), named.size());
  for (size_t i = 0; i < named.size(); ++i) {
    SCOPED_TRACE(named[i].name);
    const TensorDirectory::Location* location = directory->Find(named[i].name);
    ASSERT_NE(location, nullptr);
    EXPECT_EQ(Bytes(location->file->Read(*location->entry).view()), Bytes(tensors[i].view()));
  }
  EXPECT_EQ(directory->Find("nope"), nullptr);
}

TEST(TensorDirectoryTest, OneShardIsASingleFileAndReplacesAStaleIndex) {
  TempDir dir;
  const std::vector<Tensor> tensors = SmallTensors();
  V4RL_ASSERT_OK(WriteShardedSafetensors(dir.path(), Named(tensors), 130));
  V4RL_ASSERT_OK(WriteShardedSafetensors(dir.path(), Named(tensors), 1 << 20));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("model.safetensors.index.json")));
  // Without the index every *.safetensors file counts, so the old shards now collide.
  EXPECT_THAT(TensorDirectory::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is in both")));
  for (int i = 1; i <= 3; ++i) {
    std::filesystem::remove(dir.Join(absl::StrFormat("model-%05d-of-00003.safetensors", i)));
  }
  V4RL_ASSERT_OK_AND_ASSIGN(auto directory, TensorDirectory::Open(dir.path()));
  EXPECT_EQ(directory->files().size(), 1u);
  EXPECT_EQ(directory->tensors().size(), tensors.size());
  // A single file path opens the same way.
  V4RL_ASSERT_OK_AND_ASSIGN(auto single, TensorDirectory::Open(dir.Join("model.safetensors")));
  EXPECT_EQ(single->tensors().size(), tensors.size());
}

TEST(TensorDirectoryTest, WithoutIndexReadsEverySafetensorsFile) {
  TempDir dir;
  const std::vector<Tensor> tensors = SmallTensors();
  const std::vector<NamedTensor> named = Named(tensors);
  V4RL_ASSERT_OK(WriteSafetensors(dir.Join("b.safetensors"), {named.data(), 2}));
  V4RL_ASSERT_OK(WriteSafetensors(dir.Join("a.safetensors"), {named.data() + 2, 3}));
  V4RL_ASSERT_OK(WriteFileAtomic(dir.Join("notes.txt"), "not a tensor file"));
  V4RL_ASSERT_OK_AND_ASSIGN(auto directory, TensorDirectory::Open(dir.path()));
  ASSERT_EQ(directory->files().size(), 2u);
  EXPECT_EQ(directory->files()[0]->path(), dir.Join("a.safetensors"));  // sorted
  EXPECT_EQ(directory->tensors().size(), 5u);
  EXPECT_EQ(directory->Find("layers.0.weight")->file->path(), dir.Join("b.safetensors"));
}

TEST(TensorDirectoryTest, ReportsMissingAndInconsistentFiles) {
  TempDir dir;
  EXPECT_THAT(TensorDirectory::Open(dir.Join("absent")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("absent")));
  EXPECT_THAT(TensorDirectory::Open(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no .safetensors files")));

  const std::vector<Tensor> tensors = SmallTensors();
  const std::vector<NamedTensor> named = Named(tensors);
  V4RL_ASSERT_OK(WriteSafetensors(dir.Join("s1.safetensors"), {named.data(), 1}));
  const std::string index_path = dir.Join("model.safetensors.index.json");

  V4RL_ASSERT_OK(WriteFileAtomic(
      index_path,
      R"({"weight_map": {"layers.0.weight": "s1.safetensors", "x": "s2.safetensors"}})"));
  EXPECT_THAT(TensorDirectory::Open(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("s2.safetensors")));

  V4RL_ASSERT_OK(WriteFileAtomic(index_path, R"({"weight_map": {"other": "s1.safetensors"}})"));
  EXPECT_THAT(TensorDirectory::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("maps tensor 'other' to s1.safetensors, which does not contain")));

  V4RL_ASSERT_OK(WriteFileAtomic(index_path, R"({"weight_map": {"a": "../s1.safetensors"}})"));
  EXPECT_THAT(TensorDirectory::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a file name")));

  V4RL_ASSERT_OK(WriteFileAtomic(index_path, R"({"metadata": {}})"));
  EXPECT_THAT(TensorDirectory::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'weight_map'")));

  // A broken shard's error names its path.
  V4RL_ASSERT_OK(WriteFileAtomic(index_path, R"({"weight_map": {"a": "s3.safetensors"}})"));
  V4RL_ASSERT_OK(WriteFileAtomic(dir.Join("s3.safetensors"), Image("[]")));
  EXPECT_THAT(TensorDirectory::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("s3.safetensors")));
}

TEST(SafetensorsFileTest, ErrorsNameThePath) {
  TempDir dir;
  EXPECT_THAT(SafetensorsFile::Open(dir.Join("absent.safetensors")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("absent.safetensors")));
  V4RL_ASSERT_OK(WriteFileAtomic(dir.Join("short.safetensors"), "abc"));
  EXPECT_THAT(SafetensorsFile::Open(dir.Join("short.safetensors")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("short.safetensors")));
  V4RL_ASSERT_OK(WriteFileAtomic(dir.Join("bad.safetensors"), Image(R"({"w": 1})")));
  EXPECT_THAT(SafetensorsFile::Open(dir.Join("bad.safetensors")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("bad.safetensors: safetensors header: tensor 'w'")));
}

// ---- headers that parse ----

TEST(SafetensorsHeaderTest, AcceptsPaddingHolesEmptyTensorsAndMetadata) {
  const std::string header = R"({"b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},)"
                             R"( "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},)"
                             R"( "z": {"dtype": "I64", "shape": [0, 3], "data_offsets": [4, 4]},)"
                             R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [24, 24]},)"
                             R"( "__metadata__": {"format": "pt"}})"
                             "        ";
  V4RL_ASSERT_OK_AND_ASSIGN(const SafetensorsHeader parsed,
                            ParseImage(Image(header, std::string(32, '\0'))));
  // Sorted by offset; [8, 16) and [24, 32) are holes, and the empty tensors own no bytes.
  ASSERT_EQ(parsed.entries.size(), 4u);
  EXPECT_EQ(parsed.entries[0].name, "a");
  EXPECT_EQ(parsed.entries[1].name, "z");
  EXPECT_EQ(parsed.entries[2].name, "b");
  EXPECT_EQ(parsed.entries[3].name, "e");
  EXPECT_EQ(parsed.entries[2].data_begin, 16);
  EXPECT_EQ(parsed.entries[2].data_end, 24);
  EXPECT_EQ(parsed.metadata.at("format"), "pt");

  V4RL_ASSERT_OK_AND_ASSIGN(const SafetensorsHeader empty, ParseImage(Image("{}")));
  EXPECT_TRUE(empty.entries.empty());
}

// ---- headers that must be rejected ----

struct MalformedCase {
  const char* test_name;
  std::string image;
  const char* message;  // a substring the error must contain
};

void PrintTo(const MalformedCase& malformed, std::ostream* os) { *os << malformed.test_name; }

std::string OneTensor(const std::string& fields) { return R"({"w": {)" + fields + "}}"; }

std::vector<MalformedCase> MalformedCases() {
  const std::string data(64, '\0');
  const std::string f32 = R"("dtype": "F32", )";
  std::string huge_length = Image("{}");
  huge_length[3] = 0x10;  // 256 MiB
  std::string past_end = Image("{}");
  past_end[0] = 3;
  return {
      {"TooShort", "abc", "too short for the 8-byte header length"},
      {"LengthAboveLimit", huge_length, "above the limit of 104857600 bytes"},
      {"LengthBeyondFile", past_end, "header length 3 is beyond the file, which has 2 bytes"},
      {"NotJson", Image("{\"w\": ", data), "malformed JSON"},
      {"TooDeep", Image(std::string(40, '[') + std::string(40, ']')), "nesting deeper than"},
      {"NotAnObject", Image("[1, 2]"), "must be a JSON object of tensors"},
      {"EntryNotObject", Image(R"({"w": [1]})", data), "tensor 'w': must be an object"},
      {"MissingDType", Image(OneTensor(R"("shape": [1], "data_offsets": [0, 4])"), data),
       "tensor 'w': missing field 'dtype'"},
      {"UnknownField",
       Image(OneTensor(f32 + R"("shape": [1], "data_offsets": [0, 4], "x": 1)"), data),
       "tensor 'w': unknown field 'x'"},
      {"UnknownDType",
       Image(OneTensor(R"("dtype": "F12", "shape": [1], "data_offsets": [0, 4])"), data),
       "tensor 'w': unknown dtype \"F12\""},
      {"DTypeNotString",
       Image(OneTensor(R"("dtype": 3, "shape": [1], "data_offsets": [0, 4])"), data),
       "field 'dtype' must be a string, got 3"},
      {"ShapeNotArray", Image(OneTensor(f32 + R"("shape": 4, "data_offsets": [0, 4])"), data),
       "field 'shape' must be an array of non-negative integers, got 4"},
      {"NegativeDim", Image(OneTensor(f32 + R"("shape": [2, -1], "data_offsets": [0, 4])"), data),
       "non-negative integers, got [2,-1]"},
      {"FractionalDim", Image(OneTensor(f32 + R"("shape": [1.5], "data_offsets": [0, 4])"), data),
       "non-negative integers, got [1.5]"},
      {"StringDim", Image(OneTensor(f32 + R"("shape": ["1"], "data_offsets": [0, 4])"), data),
       "non-negative integers, got [\"1\"]"},
      {"RankAboveMax",
       Image(OneTensor(f32 + R"("shape": [1,1,1,1,1,1,1], "data_offsets": [0, 4])"), data),
       "has rank 7, above the maximum 6"},
      {"ElementCountOverflow",
       Image(OneTensor(f32 + R"("shape": [4294967296, 4294967296], "data_offsets": [0, 4])"), data),
       "more elements than int64"},
      {"OffsetsOneNumber", Image(OneTensor(f32 + R"("shape": [1], "data_offsets": [4])"), data),
       "'data_offsets' must be [begin, end] with two non-negative integers, got [4]"},
      {"OffsetsNegative", Image(OneTensor(f32 + R"("shape": [1], "data_offsets": [-4, 0])"), data),
       "two non-negative integers, got [-4,0]"},
      {"OffsetsMissing", Image(OneTensor(f32 + R"("shape": [1])"), data),
       "missing field 'data_offsets'"},
      {"EndBeforeBegin", Image(OneTensor(f32 + R"("shape": [1], "data_offsets": [8, 4])"), data),
       "data_offsets end 4 is before begin 8"},
      {"OffsetsBeyondData",
       Image(OneTensor(f32 + R"("shape": [1], "data_offsets": [64, 68])"), data),
       "data_offsets [64, 68] exceed the data region of 64 bytes"},
      {"ByteLengthMismatch",
       Image(OneTensor(f32 + R"("shape": [2, 3], "data_offsets": [0, 20])"), data),
       "shape [2, 3] x f32 is 24 bytes but data_offsets [0, 20] span 20"},
      {"Fp4OddLastDim",
       Image(OneTensor(R"("dtype": "F4", "shape": [3], "data_offsets": [0, 2])"), data),
       "f4_e2m1 needs a last dimension that fills whole bytes, got shape [3]"},
      {"Overlap",
       Image(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
             R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
             data),
       "tensors 'a' [0, 16) and 'b' [12, 20) overlap"},
      {"DuplicateName",
       Image(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
             R"( "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
             data),
       "duplicate tensor name 'w'"},
      {"DuplicateField",
       Image(OneTensor(f32 + R"("dtype": "I8", "shape": [1], "data_offsets": [0, 4])"), data),
       "duplicate key 'dtype' inside 'w'"},
      {"MetadataNotObject", Image(R"({"__metadata__": ["pt"]})"),
       "__metadata__ must be an object of string to string, got [\"pt\"]"},
      {"MetadataValueNotString", Image(R"({"__metadata__": {"step": 3}})"),
       "__metadata__ value of 'step' must be a string, got 3"},
  };
}

class MalformedHeaderTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedHeaderTest, IsRejectedWithAMessageNamingTheProblem) {
  EXPECT_THAT(ParseImage(GetParam().image),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(GetParam().message)));
}

INSTANTIATE_TEST_SUITE_P(AllRules, MalformedHeaderTest, ::testing::ValuesIn(MalformedCases()),
                         [](const auto& info) { return std::string(info.param.test_name); });

}  // namespace
}  // namespace v4rl::core
