// WeightStreamAssembler without gRPC: chunks of any size reassemble the exact bytes (also tensors
// split across chunks and chunks spanning tensors, zero-size tensors); each malformed directory or
// stream is rejected with the field named; sizes that would overflow or exceed the budget are
// refused before anything is allocated.
#include "rollout/weight_stream.h"

#include <cstring>
#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace v4rl::rollout {
namespace {

using ::testing::HasSubstr;

struct Fixture {
  std::vector<core::Tensor> tensors;
  std::vector<core::NamedTensor> named;
};

Fixture MakeTensors() {
  Fixture f;
  const std::vector<std::pair<std::string, core::Shape>> specs = {
      {"embed.weight", {7, 5}}, {"norm.weight", {5}}, {"empty", {0, 3}}, {"head.weight", {3, 5}}};
  float next = 0.5f;
  for (const auto& [name, shape] : specs) {
    core::Tensor t = core::Tensor::Empty(core::DType::kF32, shape);
    float* data = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) data[i] = next += 1.25f;
    f.tensors.push_back(t);
  }
  for (size_t i = 0; i < specs.size(); ++i)
    f.named.push_back({specs[i].first, f.tensors[i].view()});
  return f;
}

absl::Status Assemble(const std::vector<StreamTensor>& directory,
                      const std::vector<std::string>& chunks, int64_t budget = 1 << 20) {
  auto assembler = WeightStreamAssembler::Start(directory, budget);
  if (!assembler.ok()) return assembler.status();
  for (const std::string& chunk : chunks) {
    if (absl::Status added = (*assembler)->AddChunk(chunk); !added.ok()) return added;
  }
  return (*assembler)->Finish("test").status();
}

TEST(WeightStream, ChunksOfAnySizeReassembleTheBytes) {
  const Fixture f = MakeTensors();
  const absl::StatusOr<std::vector<StreamTensor>> directory = MakeStreamDirectory(f.named);
  ASSERT_TRUE(directory.ok());
  ASSERT_EQ(directory->size(), 4u);
  EXPECT_EQ((*directory)[0].dtype, "F32");
  EXPECT_EQ((*directory)[0].num_bytes, 7 * 5 * 4);
  for (const int64_t chunk_bytes : {1, 3, 17, 140, 1 << 20}) {
    auto assembler = WeightStreamAssembler::Start(*directory, 1 << 20);
    ASSERT_TRUE(assembler.ok()) << assembler.status();
    int chunks = 0;
    ASSERT_TRUE(ForEachWeightChunk(f.named, chunk_bytes, [&](std::string_view chunk) {
      ++chunks;
      EXPECT_LE(static_cast<int64_t>(chunk.size()), chunk_bytes);
      return (*assembler)->AddChunk(chunk).ok();
    }));
    EXPECT_EQ(chunks, ((7 * 5 + 5 + 3 * 5) * 4 + chunk_bytes - 1) / chunk_bytes);
    auto tensors = (*assembler)->Finish("test");
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    for (size_t i = 0; i < f.named.size(); ++i) {
      const core::TensorDirectory::Location* at = (*tensors)->Find(f.named[i].name);
      ASSERT_NE(at, nullptr) << f.named[i].name;
      const core::Tensor read = at->file->Read(*at->entry);
      ASSERT_EQ(read.numel(), f.tensors[i].numel());
      EXPECT_EQ(
          std::memcmp(read.data<float>(), f.tensors[i].data<float>(), f.tensors[i].numel() * 4), 0);
    }
  }
}

TEST(WeightStream, MalformedDirectoriesAndStreamsNameTheField) {
  const Fixture f = MakeTensors();
  const std::vector<StreamTensor> valid = *MakeStreamDirectory(f.named);
  std::vector<std::string> chunks;
  ForEachWeightChunk(f.named, 64, [&](std::string_view c) {
    chunks.emplace_back(c);
    return true;
  });
  ASSERT_TRUE(Assemble(valid, chunks).ok());
  const auto expect = [](const absl::Status& status, const std::string& field) {
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
    EXPECT_THAT(status.message(), HasSubstr(field));
  };
  const auto edited = [&](const std::function<void(std::vector<StreamTensor>&)>& edit) {
    std::vector<StreamTensor> directory = valid;
    edit(directory);
    return directory;
  };
  expect(Assemble(edited([](auto& d) { d[1].name = ""; }), chunks), "tensors[1].name");
  expect(Assemble(edited([](auto& d) { d[1].name = "a b"; }), chunks), "tensors[1].name");
  expect(Assemble(edited([](auto& d) { d[1].name = "__metadata__"; }), chunks), "tensors[1].name");
  expect(Assemble(edited([](auto& d) { d[3].name = d[0].name; }), chunks),
         "tensors[3].name: embed.weight appears twice");
  expect(Assemble(edited([](auto& d) { d[0].dtype = "F31"; }), chunks), "tensors[0].dtype");
  expect(Assemble(edited([](auto& d) { d[0].shape = {1, 1, 1, 1, 1, 1, 1}; }), chunks),
         "tensors[0].shape (embed.weight): rank 7");
  expect(Assemble(edited([](auto& d) { d[0].shape[1] = -5; }), chunks), "tensors[0].shape[1]");
  expect(Assemble(edited([](auto& d) { d[0].num_bytes += 1; }), chunks),
         "tensors[0].num_bytes (embed.weight): 141, expected 140");
  // Sizes that overflow int64 or exceed the budget, before any allocation.
  expect(Assemble(edited([](auto& d) {
                    d[0].shape = {int64_t{1} << 40, int64_t{1} << 40, int64_t{1} << 40};
                  }),
                  chunks),
         "tensors[0].shape (embed.weight): more bytes than the limit");
  expect(Assemble(valid, chunks, /*budget=*/100), "tensors[0].shape");
  expect(Assemble(valid, chunks, /*budget=*/200), "exceed the limit of 200 (at tensors[3]");
  // The byte stream.
  expect(Assemble(valid, {chunks.begin(), chunks.end() - 1}),
         "data: the stream ended after 192 of 220 bytes; tensors[3] (head.weight)");
  std::vector<std::string> surplus = chunks;
  surplus.push_back("x");
  expect(Assemble(valid, surplus), "the tensor directory declares only 220 bytes");
  expect(Assemble(valid, {""}), "data: empty chunk");
  expect(Assemble(valid, {std::string(kMaxWeightChunkBytes + 1, 'x')}), "exceeds the limit");
  std::vector<StreamTensor> too_many(kMaxStreamTensors + 1);
  expect(Assemble(too_many, {}), "tensors: 262145 tensors");
}

}  // namespace
}  // namespace v4rl::rollout
