// The device-table decode kernels (kernels/cuda/decode_graph.h) against the host-driven path they
// stand in for (model/attention_decode_cuda.cc's single-token spans), bit for bit: appends that do
// and do not complete a window (the first window, with no previous one; later windows) against
// BatchCopy + CompressPoolEntries with the host's copy and PoolEntry lists; the entry and ring
// writes against host copies; the built items against the host's structs field by field; and
// DecodeAttentionOnDevice / DecodeIndexerScoresOnDevice on built items against DecodeAttention /
// DecodeIndexerScores on the host's items; the appends' RoPE rows, and RopeTablesAt's two tables,
// against RopeTableAt on the same positions. gpu label; skips without a device.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/decode_graph.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/rows.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using core::TensorView;
using testing::RandomNormal;

Tensor Dev(DType dtype, std::initializer_list<int64_t> shape) {
  return Tensor::Empty(dtype, shape, DeviceAllocator());
}

// A device tensor of `dtype` holding seeded N(0, stddev) values (bf16 rounded to nearest even).
Tensor RandomDev(DType dtype, std::initializer_list<int64_t> shape, uint64_t seed,
                 float stddev = 1.0f) {
  return testing::ToDevice(RandomNormal(shape, seed, stddev), dtype);
}

// Two device tensors holding the same bytes (the kernel's state and the reference's).
std::pair<Tensor, Tensor> Twins(DType dtype, std::initializer_list<int64_t> shape, uint64_t seed,
                                float stddev = 1.0f) {
  const Tensor a = RandomDev(dtype, shape, seed, stddev);
  const Tensor b = Dev(dtype, shape);
  EXPECT_TRUE(Copy(a.view(), b.view()).ok());
  return {a, b};
}

// The bytes of a device view, after the queued work.
std::vector<uint8_t> Bytes(const TensorView& device) {
  EXPECT_TRUE(Synchronize().ok());
  const Tensor host = Tensor::Empty(device.dtype, device.shape_vector());
  EXPECT_TRUE(Copy(device, host.view()).ok());
  const auto* p = static_cast<const uint8_t*>(host.view().data);
  return std::vector<uint8_t>(p, p + host.view().nbytes());
}

// Elements (of `element_bytes`) whose bytes differ; prints the count as [measured].
int64_t Mismatches(const std::string& name, const std::vector<uint8_t>& got,
                   const std::vector<uint8_t>& want, int64_t element_bytes) {
  EXPECT_EQ(got.size(), want.size()) << name;
  int64_t differ = 0;
  const int64_t n = static_cast<int64_t>(std::min(got.size(), want.size())) / element_bytes;
  for (int64_t i = 0; i < n; ++i) {
    differ += std::memcmp(got.data() + i * element_bytes, want.data() + i * element_bytes,
                          element_bytes) != 0;
  }
  std::printf("[measured] %s: %lld of %lld elements differ (expected 0: bit for bit)\n",
              name.c_str(), static_cast<long long>(differ), static_cast<long long>(n));
  return differ;
}

int64_t MismatchesOf(const std::string& name, const TensorView& got, const TensorView& want) {
  return Mismatches(name, Bytes(got), Bytes(want), core::DTypeBytes(got.dtype, 1));
}

// A device array of `values` (raw bytes: the structs of device pointers the kernels read).
template <typename T>
Tensor Upload(const std::vector<T>& values) {
  const int64_t bytes = static_cast<int64_t>(values.size() * sizeof(T));
  const Tensor host = Tensor::Empty(DType::kU8, {std::max<int64_t>(bytes, 1)});
  std::memcpy(host.view().data, values.data(), bytes);
  const Tensor device = Dev(DType::kU8, {std::max<int64_t>(bytes, 1)});
  EXPECT_TRUE(Copy(host.view(), device.view()).ok());
  return device;
}

template <typename T>
std::vector<T> Download(const Tensor& device, int64_t count) {
  const std::vector<uint8_t> bytes = Bytes(device.view());
  std::vector<T> values(count);
  std::memcpy(values.data(), bytes.data(), count * sizeof(T));
  return values;
}

Tensor Positions(const std::vector<int32_t>& positions) {
  Tensor host = Tensor::Empty(DType::kI32, {static_cast<int64_t>(positions.size())});
  std::copy(positions.begin(), positions.end(), host.data<int32_t>());
  return testing::ToDevice(host, DType::kI32);
}

char* Row(const TensorView& v, int64_t row) {
  return static_cast<char*>(v.data) + row * (v.nbytes() / std::max<int64_t>(v.shape[0], 1));
}
int64_t RowBytes(const TensorView& v) { return core::DTypeBytes(v.dtype, v.numel() / v.shape[0]); }

// RoPE frequencies [half] f32 on the device: theta^(-2i / rope_dim), rope_dim = 2·half.
Tensor InvFreq(int64_t half, double theta) {
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(std::pow(theta, -2.0 * static_cast<double>(i) / (2 * half)));
  }
  return testing::ToDevice(Tensor::FromFloats({half}, inv_freq), DType::kF32);
}

// ---------------------------------------------------------------------------------------------
// DecodeCompressAppend

// What an append writes besides the entries and the states: entry_positions (the call without
// RoPE rows), the entries' RoPE rows instead, or both.
enum class AppendOutputs { kPositions, kRope, kBoth };

struct AppendCase {
  std::string name;
  int64_t ratio, dim;
  bool overlap, indexer;
  std::vector<int32_t> positions;
  AppendOutputs outputs = AppendOutputs::kPositions;
  int64_t rope_half = 32;  // the RoPE rows' width (kRope, kBoth)
};

// model/attention_decode_cuda.cc's CompressAppend for spans of one token each, on the reference
// states: the appends in place, the jobs' work rows (previous window, open rows, the new row),
// one CompressPoolEntries over the completed windows, then the rows later entries need back to
// the states. entry_row[i]: row of span i's entry in *entries, or -1.
void HostAppend(const std::vector<TensorView>& skvs, const std::vector<TensorView>& sscs,
                const TensorView& kv, const TensorView& score, const std::vector<int32_t>& spans,
                int64_t ratio, bool overlap, Tensor* entries, std::vector<int64_t>* entry_row) {
  const int64_t width = kv.shape[1], entry_dim = overlap ? width / 2 : width;
  const int64_t open_slot = overlap ? ratio : 0;
  struct Job {
    size_t span;
    int64_t work_row, lead, work_windows, first_entry, open_window, num_entries, base_window,
        entry_row;
  };
  std::vector<Job> jobs;
  std::vector<RowCopy> copies;
  int64_t work_rows = 0, total_entries = 0;
  entry_row->assign(spans.size(), -1);
  for (size_t i = 0; i < spans.size(); ++i) {
    const int64_t position = spans[i], count = 1, row = static_cast<int64_t>(i);
    const int64_t open_window = position / ratio, open_rows = position % ratio;
    const int64_t end_window = (position + count) / ratio;
    if (end_window == open_window) {
      copies.push_back({Row(kv, row), Row(skvs[i], open_slot + open_rows), RowBytes(kv)});
      copies.push_back({Row(score, row), Row(sscs[i], open_slot + open_rows), RowBytes(score)});
      continue;
    }
    const bool has_previous = overlap && open_window >= 1;
    Job job;
    job.span = i;
    job.lead = (has_previous ? ratio : 0) + open_rows;
    const int64_t rows = job.lead + count;
    job.work_row = work_rows;
    work_rows += (rows + ratio - 1) / ratio * ratio;
    job.work_windows = rows / ratio;
    job.first_entry = has_previous ? 1 : 0;
    job.open_window = open_window;
    job.num_entries = job.work_windows - job.first_entry;
    job.base_window = open_window - job.first_entry;
    job.entry_row = total_entries;
    total_entries += job.num_entries;
    (*entry_row)[i] = job.entry_row;
    jobs.push_back(job);
  }
  Tensor work_kv, work_score;
  if (!jobs.empty()) {
    work_kv = Dev(DType::kBF16, {work_rows, width});
    work_score = Dev(DType::kF32, {work_rows, width});
  }
  for (const Job& job : jobs) {
    const int64_t row = static_cast<int64_t>(job.span);
    const TensorView skv = skvs[job.span], ssc = sscs[job.span];
    const int64_t from = job.first_entry ? 0 : open_slot;
    if (job.lead > 0) {
      copies.push_back(
          {Row(skv, from), Row(work_kv.view(), job.work_row), job.lead * RowBytes(skv)});
      copies.push_back(
          {Row(ssc, from), Row(work_score.view(), job.work_row), job.lead * RowBytes(ssc)});
    }
    copies.push_back({Row(kv, row), Row(work_kv.view(), job.work_row + job.lead), RowBytes(kv)});
    copies.push_back(
        {Row(score, row), Row(work_score.view(), job.work_row + job.lead), RowBytes(score)});
  }
  ASSERT_TRUE(BatchCopy(copies).ok());
  *entries = Dev(DType::kBF16, {std::max<int64_t>(total_entries, 1), entry_dim});
  if (jobs.empty()) return;
  std::vector<PoolEntry> pool;
  for (const Job& job : jobs) {
    for (int64_t w = job.first_entry; w < job.work_windows; ++w) {
      pool.push_back({static_cast<int32_t>(job.work_row / ratio + w), overlap && w >= 1});
    }
  }
  ASSERT_TRUE(CompressPoolEntries(work_kv.view(), work_score.view(), ratio, overlap, pool,
                                  entries->view().Slice(0, 0, total_entries))
                  .ok());
  copies.clear();
  for (const Job& job : jobs) {
    const int64_t position = spans[job.span], count = 1;
    const TensorView skv = skvs[job.span], ssc = sscs[job.span];
    const int64_t end = position + count, end_window = end / ratio;
    auto work_row = [&](int64_t p) { return job.work_row + p - job.base_window * ratio; };
    if (overlap) {
      copies.push_back({Row(work_kv.view(), work_row((end_window - 1) * ratio)), Row(skv, 0),
                        ratio * RowBytes(skv)});
      copies.push_back({Row(work_score.view(), work_row((end_window - 1) * ratio)), Row(ssc, 0),
                        ratio * RowBytes(ssc)});
    }
    if (end % ratio > 0) {
      copies.push_back({Row(work_kv.view(), work_row(end_window * ratio)), Row(skv, open_slot),
                        (end % ratio) * RowBytes(skv)});
      copies.push_back({Row(work_score.view(), work_row(end_window * ratio)), Row(ssc, open_slot),
                        (end % ratio) * RowBytes(ssc)});
    }
  }
  ASSERT_TRUE(BatchCopy(copies).ok());
  ASSERT_TRUE(Synchronize().ok());  // the work rows are freed on return
}

void CheckAppend(const AppendCase& c) {
  SCOPED_TRACE(c.name);
  const int64_t m = c.ratio, rows = static_cast<int64_t>(c.positions.size());
  const int64_t slots = (c.overlap ? 2 : 1) * m, width = (c.overlap ? 2 : 1) * c.dim;
  // Per sequence: the kernel's state, the reference's copy of it, and the other compressor's
  // state (must stay untouched).
  std::vector<Tensor> keep;
  std::vector<TensorView> got_kv, got_score, ref_kv, ref_score, others;
  std::vector<DecodeRowState> table(rows);
  for (int64_t i = 0; i < rows; ++i) {
    auto [gk, rk] = Twins(DType::kBF16, {slots, width}, 1000 + 10 * i);
    auto [gs, rs] = Twins(DType::kF32, {slots, width}, 1001 + 10 * i, 2.0f);
    auto [ok, ok_ref] = Twins(DType::kBF16, {slots, width}, 1002 + 10 * i);
    auto [os, os_ref] = Twins(DType::kF32, {slots, width}, 1003 + 10 * i);
    got_kv.push_back(gk.view());
    got_score.push_back(gs.view());
    ref_kv.push_back(rk.view());
    ref_score.push_back(rs.view());
    others.push_back(ok.view());
    others.push_back(os.view());
    (c.indexer ? table[i].index_kv : table[i].comp_kv) = gk.view().data;
    (c.indexer ? table[i].index_score : table[i].comp_score) = gs.view().data;
    (c.indexer ? table[i].comp_kv : table[i].index_kv) = ok.view().data;
    (c.indexer ? table[i].comp_score : table[i].index_score) = os.view().data;
    for (const Tensor& t : {gk, rk, gs, rs, ok, ok_ref, os, os_ref}) keep.push_back(t);
  }
  std::vector<std::vector<uint8_t>> others_before;
  for (const TensorView& v : others) others_before.push_back(Bytes(v));
  const Tensor d_table = Upload(table);
  const Tensor positions = Positions(c.positions);
  const Tensor kv = RandomDev(DType::kBF16, {rows, width}, 77);
  const Tensor score = RandomDev(DType::kF32, {rows, width}, 78, 2.0f);
  const Tensor out = RandomDev(DType::kBF16, {rows, c.dim}, 79);  // non-completing rows: zeros
  const Tensor entry_positions = Dev(DType::kI32, {rows});
  const bool with_positions = c.outputs != AppendOutputs::kRope;
  const bool with_rope = c.outputs != AppendOutputs::kPositions;
  const auto* d_rows = static_cast<const DecodeRowState*>(d_table.view().data);
  Tensor inv_freq, cos, sin;
  if (with_rope) {  // random bits first: every row (completing or not) must be written
    inv_freq = InvFreq(c.rope_half, 160000.0);
    cos = RandomDev(DType::kF32, {rows, c.rope_half}, 80);
    sin = RandomDev(DType::kF32, {rows, c.rope_half}, 81);
    const absl::Status status = DecodeCompressAppend(
        d_rows, c.indexer, positions.view(), kv.view(), score.view(), m, c.overlap, out.view(),
        with_positions ? entry_positions.view() : TensorView(), inv_freq.view(), cos.view(),
        sin.view());
    ASSERT_TRUE(status.ok()) << status;
  } else {  // the call without RoPE rows
    const absl::Status status =
        DecodeCompressAppend(d_rows, c.indexer, positions.view(), kv.view(), score.view(), m,
                             c.overlap, out.view(), entry_positions.view());
    ASSERT_TRUE(status.ok()) << status;
  }

  Tensor entries;
  std::vector<int64_t> entry_row;
  HostAppend(ref_kv, ref_score, kv.view(), score.view(), c.positions, m, c.overlap, &entries,
             &entry_row);
  // A token that completes its window: the host path pools it from a work buffer and leaves the
  // open window's last state row stale, the device path writes it there first; that row is
  // written again before anything reads it, so expect the device's bytes in it.
  std::vector<RowCopy> dead_rows;
  const int64_t open_last = (c.overlap ? m : 0) + m - 1;
  for (int64_t i = 0; i < rows; ++i) {
    if ((c.positions[i] + 1) % m != 0) continue;
    dead_rows.push_back({static_cast<const char*>(kv.view().data) + i * width * 2,
                         static_cast<char*>(ref_kv[i].data) + open_last * width * 2, width * 2});
    dead_rows.push_back({static_cast<const char*>(score.view().data) + i * width * 4,
                         static_cast<char*>(ref_score[i].data) + open_last * width * 4, width * 4});
  }
  ASSERT_TRUE(BatchCopy(dead_rows).ok());
  const std::vector<uint8_t> got_out = Bytes(out.view());
  const std::vector<uint8_t> ref_entries = Bytes(entries.view());
  const int64_t row_bytes = c.dim * 2;
  std::vector<uint8_t> want_out(rows * row_bytes, 0);  // bf16 +0
  int64_t completing = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (entry_row[i] < 0) continue;
    ++completing;
    std::memcpy(want_out.data() + i * row_bytes, ref_entries.data() + entry_row[i] * row_bytes,
                row_bytes);
  }
  ASSERT_GT(completing, 0) << "the case must complete a window";
  ASSERT_LT(completing, rows) << "the case must leave a window open";
  EXPECT_EQ(Mismatches(c.name + " out", got_out, want_out, 2), 0);
  for (int64_t i = 0; i < rows; ++i) {
    const std::string seq =
        c.name + " sequence " + std::to_string(i) + " (p " + std::to_string(c.positions[i]) + ")";
    EXPECT_EQ(MismatchesOf(seq + " state kv", got_kv[i], ref_kv[i]), 0);
    EXPECT_EQ(MismatchesOf(seq + " state score", got_score[i], ref_score[i]), 0);
  }
  for (size_t i = 0; i < others.size(); ++i) {
    EXPECT_TRUE(Bytes(others[i]) == others_before[i]) << "the other compressor's state changed";
  }
  if (with_positions) {
    const std::vector<int32_t> got_positions = Download<int32_t>(entry_positions, rows);
    for (int64_t i = 0; i < rows; ++i) {
      EXPECT_EQ(got_positions[i], c.positions[i] / m * m) << "row " << i;
    }
  }
  if (!with_rope) return;
  // The tables the step used to build with a RopeTableAt launch at the entries' positions (device
  // positions, the graph path's), and the launch-by-launch path's (a host span): bit for bit.
  std::vector<int32_t> entry(rows);
  for (int64_t i = 0; i < rows; ++i) entry[i] = c.positions[i] / m * m;
  const Tensor d_entry = Positions(entry);
  const Tensor want_cos = Dev(DType::kF32, {rows, c.rope_half});
  const Tensor want_sin = Dev(DType::kF32, {rows, c.rope_half});
  ASSERT_TRUE(RopeTableAt(inv_freq.view(), d_entry.view(), want_cos.view(), want_sin.view()).ok());
  EXPECT_EQ(
      MismatchesOf(c.name + " cos vs RopeTableAt (device positions)", cos.view(), want_cos.view()),
      0);
  EXPECT_EQ(
      MismatchesOf(c.name + " sin vs RopeTableAt (device positions)", sin.view(), want_sin.view()),
      0);
  ASSERT_TRUE(RopeTableAt(inv_freq.view(), entry, want_cos.view(), want_sin.view()).ok());
  EXPECT_EQ(
      MismatchesOf(c.name + " cos vs RopeTableAt (host positions)", cos.view(), want_cos.view()),
      0);
  EXPECT_EQ(
      MismatchesOf(c.name + " sin vs RopeTableAt (host positions)", sin.view(), want_sin.view()),
      0);
}

TEST(CudaDecodeGraph, CompressAppendOverlapMatchesHostPath) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // m - 1: the first window (no previous one); 2m - 1, 7m - 1, 1024m - 1: later windows; 0, m,
  // 5m + 2: windows left open.
  const std::vector<int32_t> positions = {3, 0, 7, 4, 22, 27, 4095};
  CheckAppend({"CSA compressor m 4 dim 96", 4, 96, true, false, positions});
  CheckAppend({"CSA indexer m 4 dim 64", 4, 64, true, true, positions});
}

TEST(CudaDecodeGraph, CompressAppendWithoutOverlapMatchesHostPath) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckAppend({"HCA m 128 dim 64", 128, 64, false, false, {127, 0, 255, 128, 1000, 1279}});
  // 72-byte rows: the byte-wise copies.
  CheckAppend({"m 16 dim 36", 16, 36, false, false, {15, 3, 31, 16, 47}});
}

// The appends' RoPE rows (the step's table launch folded into the append) against RopeTableAt at
// the entries' positions, with the entries and states still checked against the host path: 17
// rows, positions past 100000 up to 2^20 - 1, completing and open windows; halves of 32 (the mid
// config), 17 (odd) and 300 (more than the block's threads); without and with entry_positions.
TEST(CudaDecodeGraph, CompressAppendRopeRowsMatchRopeTableAt) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::vector<int32_t> csa = {3,      0, 7,      100003, 100001,  131071, 4095,   1048575, 22,
                                    100000, 5, 262143, 99999,  1000002, 11,     524287, 77777};
  CheckAppend({"CSA m 4 dim 96, RoPE rows", 4, 96, true, false, csa, AppendOutputs::kRope, 32});
  CheckAppend({"CSA indexer m 4 dim 64, RoPE rows and entry_positions", 4, 64, true, true, csa,
               AppendOutputs::kBoth, 17});
  const std::vector<int32_t> hca = {127,     0,       255,  128,    100095, 100000,
                                    131071,  1048575, 1000, 262143, 12799,  5,
                                    1000063, 777777,  383,  200000, 65535};
  CheckAppend(
      {"HCA m 128 dim 64, RoPE rows", 128, 64, false, false, hca, AppendOutputs::kRope, 300});
}

// ---------------------------------------------------------------------------------------------
// RopeTablesAt

// The decode step's two tables in one launch against a RopeTableAt each, bit for bit: 17 rows,
// positions past 100000, tables of different widths and frequencies.
TEST(CudaDecodeGraph, RopeTablesAtMatchesTwoRopeTableAt) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::vector<int32_t> host_positions = {0,      1,       5,      4095,   100000, 100001,
                                               131071, 1048575, 777777, 3,      99999,  262144,
                                               17,     1000003, 65536,  524287, 12345};
  const int64_t rows = static_cast<int64_t>(host_positions.size());
  const Tensor positions = Positions(host_positions);
  const int64_t half = 32, half2 = 17;
  const Tensor inv_freq = InvFreq(half, 10000.0), inv_freq2 = InvFreq(half2, 160000.0);
  const Tensor cos = RandomDev(DType::kF32, {rows, half}, 90);
  const Tensor sin = RandomDev(DType::kF32, {rows, half}, 91);
  const Tensor cos2 = RandomDev(DType::kF32, {rows, half2}, 92);
  const Tensor sin2 = RandomDev(DType::kF32, {rows, half2}, 93);
  const absl::Status status = RopeTablesAt(positions.view(), inv_freq.view(), cos.view(),
                                           sin.view(), inv_freq2.view(), cos2.view(), sin2.view());
  ASSERT_TRUE(status.ok()) << status;
  const Tensor want_cos = Dev(DType::kF32, {rows, half}), want_sin = Dev(DType::kF32, {rows, half});
  const Tensor want_cos2 = Dev(DType::kF32, {rows, half2});
  const Tensor want_sin2 = Dev(DType::kF32, {rows, half2});
  ASSERT_TRUE(
      RopeTableAt(inv_freq.view(), positions.view(), want_cos.view(), want_sin.view()).ok());
  ASSERT_TRUE(
      RopeTableAt(inv_freq2.view(), positions.view(), want_cos2.view(), want_sin2.view()).ok());
  EXPECT_EQ(MismatchesOf("RopeTablesAt cos", cos.view(), want_cos.view()), 0);
  EXPECT_EQ(MismatchesOf("RopeTablesAt sin", sin.view(), want_sin.view()), 0);
  EXPECT_EQ(MismatchesOf("RopeTablesAt cos2", cos2.view(), want_cos2.view()), 0);
  EXPECT_EQ(MismatchesOf("RopeTablesAt sin2", sin2.view(), want_sin2.view()), 0);

  // A wrong second table is refused, naming it.
  const Tensor short_sin2 = Dev(DType::kF32, {rows - 1, half2});
  const absl::Status bad = RopeTablesAt(positions.view(), inv_freq.view(), cos.view(), sin.view(),
                                        inv_freq2.view(), cos2.view(), short_sin2.view());
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_NE(bad.message().find("sin2 has shape"), std::string::npos) << bad;
}

// ---------------------------------------------------------------------------------------------
// DecodeCompressCommit

TEST(CudaDecodeGraph, CommitMatchesHostCopies) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t m = 4, dim = 96, idim = 64, capacity = 64;
  const std::vector<int32_t> positions = {3, 5, 63, 16, 40, 11};
  const int64_t rows = static_cast<int64_t>(positions.size());
  std::vector<Tensor> entries, keys;
  std::vector<DecodeRowState> table(rows);
  for (int64_t i = 0; i < rows; ++i) {
    entries.push_back(RandomDev(DType::kBF16, {capacity / m, dim}, 300 + i));
    keys.push_back(RandomDev(DType::kBF16, {capacity / m, idim}, 320 + i));
    table[i].entries = entries[i].view().data;
    table[i].index_keys = keys[i].view().data;
  }
  const Tensor d_table = Upload(table);
  const auto* t = static_cast<const DecodeRowState*>(d_table.view().data);
  const Tensor d_positions = Positions(positions);
  const Tensor new_entries = RandomDev(DType::kBF16, {rows, dim}, 360);
  const Tensor new_keys = RandomDev(DType::kBF16, {rows, idim}, 361);
  // Expected: the buffers before, with the rows each position writes replaced.
  std::vector<std::vector<uint8_t>> want_entries, want_keys;
  const std::vector<uint8_t> e_rows = Bytes(new_entries.view()), k_rows = Bytes(new_keys.view());
  for (int64_t i = 0; i < rows; ++i) {
    want_entries.push_back(Bytes(entries[i].view()));
    want_keys.push_back(Bytes(keys[i].view()));
    const int64_t p = positions[i];
    if ((p + 1) % m == 0) {
      std::memcpy(want_entries[i].data() + p / m * dim * 2, e_rows.data() + i * dim * 2, dim * 2);
      std::memcpy(want_keys[i].data() + p / m * idim * 2, k_rows.data() + i * idim * 2, idim * 2);
    }
  }
  ASSERT_TRUE(
      DecodeCompressCommit(t, /*indexer=*/false, d_positions.view(), new_entries.view(), m).ok());
  ASSERT_TRUE(
      DecodeCompressCommit(t, /*indexer=*/true, d_positions.view(), new_keys.view(), m).ok());
  for (int64_t i = 0; i < rows; ++i) {
    const std::string seq =
        "sequence " + std::to_string(i) + " (p " + std::to_string(positions[i]) + ")";
    EXPECT_EQ(Mismatches(seq + " entries", Bytes(entries[i].view()), want_entries[i], 2), 0);
    EXPECT_EQ(Mismatches(seq + " index keys", Bytes(keys[i].view()), want_keys[i], 2), 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Items, and the attention / indexer launches on them

// One decode step's device data: per sequence a ring, entries and indexer keys in a table; the
// step's queries, K=V rows, picks, indexer queries and weights.
struct Step {
  int64_t heads = 0, dim = 0, window = 0, ratio = 0;
  int64_t index_heads = 20, index_dim = 128;  // two 16-head groups, padded
  std::vector<int32_t> positions;
  std::vector<Tensor> rings, entries, index_keys;
  std::vector<DecodeRowState> table;
  Tensor d_table, d_positions, q, kv_rows, picks, index_q, index_weights;

  int64_t rows() const { return static_cast<int64_t>(positions.size()); }
  const DecodeRowState* device_table() const {
    return static_cast<const DecodeRowState*>(d_table.view().data);
  }
};

// topk > 0: CSA picks [rows, topk] (some -1, some past the row's entries).
Step MakeStep(int64_t heads, int64_t dim, int64_t window, int64_t ratio, int64_t topk,
              const std::vector<int32_t>& positions) {
  Step s;
  s.heads = heads;
  s.dim = dim;
  s.window = window;
  s.ratio = ratio;
  s.positions = positions;
  const int64_t rows = s.rows();
  int64_t capacity = 1;
  for (int32_t p : positions) capacity = std::max<int64_t>(capacity, p + 1);
  const int64_t num_entries = ratio > 0 ? std::max<int64_t>(1, capacity / ratio) : 1;
  s.table.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    s.rings.push_back(RandomDev(DType::kBF16, {window, dim}, 500 + 10 * i));
    s.entries.push_back(RandomDev(DType::kBF16, {num_entries, dim}, 501 + 10 * i));
    s.index_keys.push_back(RandomDev(DType::kBF16, {num_entries, s.index_dim}, 502 + 10 * i));
    s.table[i].ring = s.rings[i].view().data;
    if (ratio > 0) s.table[i].entries = s.entries[i].view().data;
    if (topk > 0) s.table[i].index_keys = s.index_keys[i].view().data;
  }
  s.d_table = Upload(s.table);
  s.d_positions = Positions(positions);
  s.q = RandomDev(DType::kBF16, {rows, heads, dim}, 600);
  s.kv_rows = RandomDev(DType::kBF16, {rows, dim}, 601);
  s.index_q = RandomDev(DType::kBF16, {rows, s.index_heads, s.index_dim}, 602);
  s.index_weights = RandomDev(DType::kF32, {rows, s.index_heads}, 603, 0.2f);
  if (topk > 0) {
    Tensor picks = Tensor::Empty(DType::kI32, {rows, topk});
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t e = (positions[i] + 1) / ratio;
      for (int64_t j = 0; j < topk; ++j) {
        // Entries from the newest down, -1 past the visible ones, one index past them.
        int32_t pick = j < e ? static_cast<int32_t>(e - 1 - (j * 7) % e) : -1;
        if (j == topk - 1 && e > 0) pick = static_cast<int32_t>(e + 3);
        picks.data<int32_t>()[i * topk + j] = pick;
      }
    }
    s.picks = testing::ToDevice(picks, DType::kI32);
  }
  return s;
}

// model/attention_decode_cuda.cc's DecodeAttentionItem for a single-token span.
std::vector<DecodeAttentionItem> HostAttentionItems(const Step& s, const Tensor& out) {
  std::vector<DecodeAttentionItem> items;
  const bool compressed = s.ratio > 0, csa = s.picks.defined();
  for (int64_t i = 0; i < s.rows(); ++i) {
    DecodeAttentionItem item;
    item.q = Row(s.q.view(), i);
    item.ring = s.table[i].ring;
    item.own_kv = Row(s.kv_rows.view(), i);
    item.out = Row(out.view(), i);
    item.position = s.positions[i];
    const int64_t entries = compressed ? (s.positions[i] + 1) / s.ratio : 0;
    if (entries > 0) {
      item.comp = s.table[i].entries;
      item.num_comp = entries;
      if (csa) {
        item.comp_idx = s.picks.view().Slice(0, i, i + 1).data_as<const int32_t>();
        item.comp_topk = s.picks.view().shape[1];
      }
    }
    items.push_back(item);
  }
  return items;
}

// model/attention_decode_cuda.cc's DecodeIndexerItem for a single-token span (rows of ld).
std::vector<DecodeIndexerItem> HostIndexerItems(const Step& s, const Tensor& scores, int64_t ld) {
  std::vector<DecodeIndexerItem> items;
  for (int64_t i = 0; i < s.rows(); ++i) {
    DecodeIndexerItem item;
    item.q = Row(s.index_q.view(), i);
    item.weights = reinterpret_cast<const float*>(Row(s.index_weights.view(), i));
    item.keys = s.table[i].index_keys;
    item.scores = scores.data<float>() + i * ld;
    item.num_keys = (s.positions[i] + 1) / s.ratio;
    items.push_back(item);
  }
  return items;
}

// The key count DecodeAttention computes from its items.
int64_t MaxKeys(const std::vector<DecodeAttentionItem>& items, int64_t window) {
  int64_t max_keys = 1;
  for (const DecodeAttentionItem& it : items) {
    const int64_t comp =
        it.comp == nullptr ? 0 : (it.comp_idx != nullptr ? it.comp_topk : it.num_comp);
    max_keys = std::max(max_keys, std::min(it.position, window - 1) + 1 + comp);
  }
  return max_keys;
}

void ExpectSameItems(const std::vector<DecodeAttentionItem>& got,
                     const std::vector<DecodeAttentionItem>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE("attention item " + std::to_string(i));
    EXPECT_EQ(got[i].q, want[i].q);
    EXPECT_EQ(got[i].ring, want[i].ring);
    EXPECT_EQ(got[i].own_kv, want[i].own_kv);
    EXPECT_EQ(got[i].comp, want[i].comp);
    EXPECT_EQ(got[i].comp_idx, want[i].comp_idx);
    EXPECT_EQ(got[i].out, want[i].out);
    EXPECT_EQ(got[i].position, want[i].position);
    EXPECT_EQ(got[i].num_comp, want[i].num_comp);
    EXPECT_EQ(got[i].comp_topk, want[i].comp_topk);
  }
}

struct AttentionCase {
  std::string name;
  int64_t ratio, topk;
  std::vector<int32_t> positions;
};

// DecodeRingWriteAndAttentionItems: the rings equal the host's copies of each K=V row into slot
// p mod window, the built items the host's; DecodeAttentionOnDevice on them, after the ring write,
// equals DecodeAttention on the host's items before it, bit for bit (the write may precede the
// attention: it changes no slot an item reads).
void CheckAttention(const AttentionCase& c) {
  SCOPED_TRACE(c.name);
  const int64_t heads = 20, dim = 128, window = 32;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const Step s = MakeStep(heads, dim, window, c.ratio, c.topk, c.positions);
  const int64_t rows = s.rows();
  const Tensor sink = RandomDev(DType::kF32, {heads}, 700, 0.5f);
  const Tensor host_out = Dev(DType::kBF16, {rows, heads, dim});
  const Tensor device_out = Dev(DType::kBF16, {rows, heads, dim});
  const Tensor items = Dev(DType::kU8, {rows * static_cast<int64_t>(sizeof(DecodeAttentionItem))});
  auto* d_items = static_cast<DecodeAttentionItem*>(items.view().data);
  const std::vector<DecodeAttentionItem> host_items = HostAttentionItems(s, host_out);
  // The host path's order: attention over the rings before the new rows go in.
  ASSERT_TRUE(DecodeAttention(host_items, sink.data<float>(), heads, dim, window, scale).ok());
  // Expected rings: the rings before, with each row's slot replaced by its K=V row.
  std::vector<std::vector<uint8_t>> want_rings;
  const std::vector<uint8_t> kv_bytes = Bytes(s.kv_rows.view());
  for (int64_t i = 0; i < rows; ++i) {
    want_rings.push_back(Bytes(s.rings[i].view()));
    std::memcpy(want_rings[i].data() + s.positions[i] % window * dim * 2,
                kv_bytes.data() + i * dim * 2, dim * 2);
  }
  ASSERT_TRUE(DecodeRingWriteAndAttentionItems(s.device_table(), s.d_positions.view(), s.q.view(),
                                               s.kv_rows.view(), device_out.view(), window, c.ratio,
                                               s.picks.defined() ? s.picks.view() : TensorView(),
                                               d_items)
                  .ok());
  for (int64_t i = 0; i < rows; ++i) {
    const std::string ring =
        c.name + " ring " + std::to_string(i) + " (p " + std::to_string(s.positions[i]) + ")";
    EXPECT_EQ(Mismatches(ring, Bytes(s.rings[i].view()), want_rings[i], 2), 0);
  }
  // The host's items with out redirected: what the built items must hold.
  std::vector<DecodeAttentionItem> want = host_items;
  for (int64_t i = 0; i < rows; ++i) want[i].out = Row(device_out.view(), i);
  ExpectSameItems(Download<DecodeAttentionItem>(items, rows), want);

  ASSERT_TRUE(DecodeAttentionOnDevice(d_items, rows, MaxKeys(host_items, window),
                                      sink.data<float>(), heads, dim, window, scale)
                  .ok());
  EXPECT_EQ(MismatchesOf(c.name + " attention out", device_out.view(), host_out.view()), 0);
}

TEST(CudaDecodeGraph, RingWriteAndAttentionItemsAndLaunchMatchHost) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  // Rows before the first entry (null comp), at the first, and far in (the ring wrapped).
  CheckAttention({"CSA m 4 top-6", 4, 6, {2, 3, 40, 7, 500, 0}});
  CheckAttention({"HCA m 16", 16, 0, {14, 15, 100, 1000}});
  CheckAttention({"sliding window", 0, 0, {0, 5, 31, 32, 300}});
  // One item: its keys split over many blocks and merged (DecodeAttentionCombine).
  CheckAttention({"HCA m 16 one long item", 16, 0, {20000}});
}

TEST(CudaDecodeGraph, IndexerItemsAndLaunchMatchHostItems) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t ratio = 4;
  const Step s = MakeStep(4, 64, 32, ratio, 4, {2, 3, 40, 7, 1001, 0});
  const int64_t rows = s.rows();
  int64_t ld = 0;  // as the host path: the longest row's keys
  for (int32_t p : s.positions) ld = std::max<int64_t>(ld, (p + 1) / ratio);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.index_dim));
  const Tensor host_scores = Dev(DType::kF32, {rows, ld});
  const Tensor device_scores = Dev(DType::kF32, {rows, ld});
  const Tensor items = Dev(DType::kU8, {rows * static_cast<int64_t>(sizeof(DecodeIndexerItem))});
  auto* d_items = static_cast<DecodeIndexerItem*>(items.view().data);
  ASSERT_TRUE(BuildDecodeIndexerItems(s.device_table(), s.d_positions.view(), s.index_q.view(),
                                      s.index_weights.view(), device_scores.view(), ratio, d_items)
                  .ok());
  const std::vector<DecodeIndexerItem> host_items = HostIndexerItems(s, host_scores, ld);
  const std::vector<DecodeIndexerItem> got = Download<DecodeIndexerItem>(items, rows);
  for (int64_t i = 0; i < rows; ++i) {
    SCOPED_TRACE("indexer item " + std::to_string(i));
    EXPECT_EQ(got[i].q, host_items[i].q);
    EXPECT_EQ(got[i].weights, host_items[i].weights);
    EXPECT_EQ(got[i].keys, host_items[i].keys);
    EXPECT_EQ(got[i].scores, device_scores.data<float>() + i * ld);
    EXPECT_EQ(got[i].num_keys, host_items[i].num_keys);
  }
  ASSERT_TRUE(DecodeIndexerScores(host_items, s.index_heads, s.index_dim, ld, scale).ok());
  ASSERT_TRUE(
      DecodeIndexerScoresOnDevice(d_items, rows, s.index_heads, s.index_dim, ld, scale).ok());
  EXPECT_EQ(MismatchesOf("indexer scores", device_scores.view(), host_scores.view()), 0);
}

// Wrong dtypes and shapes are refused before anything is launched, naming the argument.
TEST(CudaDecodeGraph, BadArgumentsAreInvalidArgument) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor table = Upload(std::vector<DecodeRowState>(2));
  const auto* t = static_cast<const DecodeRowState*>(table.view().data);
  const Tensor positions = Positions({3, 7});
  const Tensor kv_f32 = Dev(DType::kF32, {2, 16});
  const Tensor score = Dev(DType::kF32, {2, 16});
  const Tensor out = Dev(DType::kBF16, {2, 8});
  const Tensor entry_positions = Dev(DType::kI32, {2});
  absl::Status status =
      DecodeCompressAppend(t, false, positions.view(), kv_f32.view(), score.view(), 4, true,
                           out.view(), entry_positions.view());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("kv must be"), std::string::npos) << status;
  const Tensor kv = Dev(DType::kBF16, {2, 16});
  const Tensor wrong_out = Dev(DType::kBF16, {2, 16});
  status = DecodeCompressAppend(t, false, positions.view(), kv.view(), score.view(), 4, true,
                                wrong_out.view(), entry_positions.view());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("out has shape"), std::string::npos) << status;
  // The RoPE rows: all three views, with one row per row of the step.
  const Tensor out_ok = Dev(DType::kBF16, {2, 8});
  const Tensor inv_freq = Dev(DType::kF32, {4});
  const Tensor cos = Dev(DType::kF32, {2, 4}), sin = Dev(DType::kF32, {2, 4});
  status = DecodeCompressAppend(t, false, positions.view(), kv.view(), score.view(), 4, true,
                                out_ok.view(), TensorView(), TensorView(), cos.view(), sin.view());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("inv_freq must be"), std::string::npos) << status;
  const Tensor wrong_cos = Dev(DType::kF32, {3, 4});
  status = DecodeCompressAppend(t, false, positions.view(), kv.view(), score.view(), 4, true,
                                out_ok.view(), entry_positions.view(), inv_freq.view(),
                                wrong_cos.view(), sin.view());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("cos has shape"), std::string::npos) << status;
  // The combined ring write and items: the null table, the window, kv_rows' shape.
  const Tensor q = Dev(DType::kBF16, {2, 4, 32});
  const Tensor kv_rows = Dev(DType::kBF16, {2, 32});
  const Tensor attn = Dev(DType::kBF16, {2, 4, 32});
  const Tensor items = Dev(DType::kU8, {2 * static_cast<int64_t>(sizeof(DecodeAttentionItem))});
  auto* d_items = static_cast<DecodeAttentionItem*>(items.view().data);
  status = DecodeRingWriteAndAttentionItems(nullptr, positions.view(), q.view(), kv_rows.view(),
                                            attn.view(), 8, 0, TensorView(), d_items);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("table"), std::string::npos) << status;
  status = DecodeRingWriteAndAttentionItems(t, positions.view(), q.view(), kv_rows.view(),
                                            attn.view(), 0, 0, TensorView(), d_items);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("window must be positive"), std::string::npos) << status;
  const Tensor wrong_kv_rows = Dev(DType::kBF16, {2, 64});
  status = DecodeRingWriteAndAttentionItems(t, positions.view(), q.view(), wrong_kv_rows.view(),
                                            attn.view(), 8, 0, TensorView(), d_items);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("kv_rows has shape"), std::string::npos) << status;
}

}  // namespace
}  // namespace v4rl::kernels::cuda
