// The layout arithmetic of the Hopper grouped GEMM (kernels/plan/grouped_gemm_wgmma.h) replayed on
// the CPU against the layouts the PTX ISA documents, so that a wrong offset, descriptor field or
// fragment index shows up without a GPU:
//  - the grid's pass slots: every (expert, pass) pair exactly once, expert-major, slots past the
//    last pair none and never more pairs than the host's bound, through the kernel's split of the
//    experts over the producer warp's lanes as well as over the whole grid at once;
//  - TMA with CU_TENSOR_MAP_SWIZZLE_128B writes byte b of a box row at its linear shared address
//    with address bits [4, 7) XORed with bits [7, 10) (16-byte chunks permuted within each
//    128-byte row by the row's index mod 8, the pattern repeating every 1024 bytes);
//  - wgmma reads element (row, k) of a K-major operand with the 128-byte swizzle from the
//    canonical layout ((8, m), (T, 2k)) : ((8T, SBO), (1, T)) in elements, T = 8 bf16 (16 bytes),
//    starting at the descriptor's start address, then the same address swizzle; the descriptor's
//    fields as the "Matrix Descriptor Format" table places them;
//  - an MN-major operand (the backward kernels': rows of K, 64 M or N values each) is read from
//    the canonical layout ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO)), its TMA boxes 8 KB apart
//    (the leading-dimension offset);
//  - the f32 accumulator of wgmma.m64nNk16 holds, in thread t's register v, the element at
//    (t, v) of the TV layout ((4, 8, 4), (2, 2, N / 8)) : ((128, 1, 16), (64, 8, 512)) of the
//    64 x N column-major tile (the PTX ISA's figure of the D fragment, as CuTe encodes it).
// The emulated kernel multiplies random bf16-valued matrices through those models, with the
// producer's and consumers' loops as the kernel runs them (a block for each pass slot of the
// expert, at most 128 tokens, its ring sized by the pass, boxes of 16, the stages wrapping), and
// must equal the plain product exactly (small integers).
// The fused SwiGLU kernel's block is emulated too: w1's and w3's 64-row boxes in the two halves of
// the weight tile, warpgroup 0's gate values through the exchange area (the pass's last stage's
// weight tile, plan::WgmmaGateExchangeOffset) to warpgroup 1, which must find, for each of its
// (column, token) fragment positions, the gate of the same (column, token).
#include <cstdint>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/plan/grouped_gemm_wgmma.h"

namespace v4rl::kernels::plan {
namespace {

// Shared memory as bytes; bf16 values are stored as small integers in int16 (exact either way).
using Smem = std::vector<uint8_t>;

int SwizzledAddress(int linear) { return linear ^ (((linear >> 7) & 7) << 4); }

// TMA: a box of `rows` rows of 64 values (128 bytes) to `dst`, rows past `valid_rows` zero.
void TmaModel(Smem& smem, int dst, const std::vector<int16_t>& src, int64_t src_row0,
              int64_t src_rows, int rows, int64_t ld, int64_t k0) {
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < kWgmmaBlockK; ++k) {
      const int64_t row = src_row0 + r;
      const int16_t v = row < src_rows ? src[row * ld + k0 + k] : int16_t{0};
      const int at = SwizzledAddress(dst + r * kWgmmaRowBytes + 2 * k);
      std::memcpy(&smem[at], &v, 2);
    }
  }
}

struct Descriptor {
  int start, lbo, sbo, base_offset, swizzle;
};

Descriptor Decode(uint64_t d) {
  return {static_cast<int>(d & 0x3FFF) << 4, static_cast<int>((d >> 16) & 0x3FFF) << 4,
          static_cast<int>((d >> 32) & 0x3FFF) << 4, static_cast<int>((d >> 49) & 0x7),
          static_cast<int>(d >> 62)};
}

// wgmma: element (row, k), k < 16, of the K-major operand a descriptor names.
int16_t WgmmaRead(const Smem& smem, uint64_t descriptor, int row, int k) {
  const Descriptor d = Decode(descriptor);
  EXPECT_EQ(d.swizzle, 1);  // 128-byte swizzle
  EXPECT_EQ(d.base_offset, 0);
  constexpr int kT = 8;  // bf16 values in 16 bytes
  const int element = (row % 8) * 8 * kT + (k % kT) + (k / kT) * kT;
  const int linear = d.start + 2 * element + (row / 8) * d.sbo;
  int16_t v;
  std::memcpy(&v, &smem[SwizzledAddress(linear)], 2);
  return v;
}

// The D fragment as the PTX ISA's figure has it (CuTe's CLayout_64xN): thread t, register v ->
// (row, col) of the 64 x n tile.
void AccumulatorReference(int n, int t, int v, int* row, int* col) {
  const int t0 = t % 4, t1 = (t / 4) % 8, t2 = t / 32;
  const int v0 = v % 2, v1 = (v / 2) % 2, v2 = v / 4;
  const int index = 128 * t0 + 1 * t1 + 16 * t2 + 64 * v0 + 8 * v1 + 512 * v2;
  *row = index % 64;
  *col = index / 64;
  ASSERT_LT(*col, n);
}

TEST(WgmmaLayout, DescriptorFields) {
  for (const uint32_t address : {0x0u, 0x400u, 0x8C00u, 0x1B000u + 3 * 32u}) {
    const Descriptor d = Decode(WgmmaDescriptorK128(address));
    EXPECT_EQ(d.start, static_cast<int>(address));
    EXPECT_EQ(d.lbo, 16);  // "not used, assumed 1" for swizzled K-major
    EXPECT_EQ(d.sbo, 1024);
    EXPECT_EQ(d.base_offset, 0);
    EXPECT_EQ(d.swizzle, 1);
    // Bits the format reserves stay 0.
    const uint64_t raw = WgmmaDescriptorK128(address);
    EXPECT_EQ(raw & ((uint64_t{3} << 14) | (uint64_t{3} << 30) | (uint64_t{7} << 46) |
                     (uint64_t{0x3FF} << 52)),
              0u);
  }
}

// wgmma: element (mn, k), k < 16, of an MN-major operand a descriptor names, from the canonical
// layout ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO)) in 16-byte units, then the swizzle.
int16_t WgmmaReadMn(const Smem& smem, uint64_t descriptor, int mn, int k) {
  const Descriptor d = Decode(descriptor);
  EXPECT_EQ(d.swizzle, 1);
  EXPECT_EQ(d.base_offset, 0);
  const int linear =
      d.start + 2 * (mn % 64) + (mn / 64) * d.lbo + (k % 8) * kWgmmaRowBytes + (k / 8) * d.sbo;
  int16_t v;
  std::memcpy(&v, &smem[SwizzledAddress(linear)], 2);
  return v;
}

TEST(WgmmaLayout, MnDescriptorFields) {
  const uint64_t raw = WgmmaDescriptorMn128(0x9000u + 2 * kWgmmaMnKStepBytes, 8192);
  const Descriptor d = Decode(raw);
  EXPECT_EQ(d.start, 0x9000 + 2 * kWgmmaMnKStepBytes);
  EXPECT_EQ(d.lbo, 8192);
  EXPECT_EQ(d.sbo, 1024);
  EXPECT_EQ(d.base_offset, 0);
  EXPECT_EQ(d.swizzle, 1);
  EXPECT_EQ(kWgmmaMnKStepBytes % kWgmmaSwizzleBytes, 0);  // a K step keeps the swizzle phase
}

// The backward kernels' MN-major operands: TMA boxes of 64 K rows x 64 M/N values (an [K, MN]
// row-major matrix; box b holds columns 64 b..) written with the swizzle, 8 KB apart, read through
// WgmmaDescriptorMn128 at each of the stage's four K steps, give back the matrix.
TEST(WgmmaLayout, MnMajorBoxesReadBackThroughDescriptor) {
  constexpr int kRows = 64, kCols = 128, kBoxBytes = kRows * kWgmmaRowBytes;
  std::vector<int16_t> src(kRows * kCols);
  for (int i = 0; i < kRows * kCols; ++i) src[i] = static_cast<int16_t>((i * 7919) % 30011 - 15000);
  Smem smem(2 * kBoxBytes + 4096, 0);
  const int base = 1024;
  for (int box = 0; box < kCols / 64; ++box) {
    TmaModel(smem, base + box * kBoxBytes, src, 0, kRows, kRows, kCols, 64 * box);
  }
  for (int step = 0; step < kWgmmaBlockK / kWgmmaInstrK; ++step) {
    const uint64_t desc = WgmmaDescriptorMn128(base + step * kWgmmaMnKStepBytes, kBoxBytes);
    for (int k = 0; k < kWgmmaInstrK; ++k) {
      for (int mn = 0; mn < kCols; ++mn) {
        ASSERT_EQ(WgmmaReadMn(smem, desc, mn, k), src[(step * kWgmmaInstrK + k) * kCols + mn])
            << "step " << step << " k " << k << " mn " << mn;
      }
    }
  }
}

TEST(WgmmaLayout, RingFitsAndKeepsSwizzleAlignment) {
  std::set<int> stage_counts;
  for (int tokens = 1; tokens <= 300; ++tokens) {
    const WgmmaRing ring = WgmmaRingFor(tokens);
    const int pass = tokens < kWgmmaMaxPassTokens ? tokens : kWgmmaMaxPassTokens;
    EXPECT_GE(ring.token_boxes * kWgmmaTokenBox, pass);
    EXPECT_LT((ring.token_boxes - 1) * kWgmmaTokenBox, pass);
    EXPECT_GE(ring.stages, 3) << tokens;
    EXPECT_LE(ring.stages, kWgmmaMaxStages);
    EXPECT_LE(ring.stages * ring.stage_bytes, kWgmmaRingBytes);
    for (int s = 0; s < ring.stages; ++s) {
      for (int g = 0; g < 2; ++g) EXPECT_EQ(WgmmaWeightOffset(ring, s, g) % kWgmmaSwizzleBytes, 0);
      for (int b = 0; b < ring.token_boxes; ++b) {
        EXPECT_EQ(WgmmaTokenOffset(ring, s, b) % kWgmmaSwizzleBytes, 0);
      }
      EXPECT_EQ(WgmmaTokenOffset(ring, s, ring.token_boxes), (s + 1) * ring.stage_bytes);
    }
    stage_counts.insert(ring.stages);
  }
  EXPECT_EQ(*stage_counts.rbegin(), 6);  // 18 KB stages for <= 16 tokens
  EXPECT_EQ(*stage_counts.begin(), 3);   // 32 KB stages for > 96
}

// The kernel's FindPass replayed: each lane of the producer warp counts the passes of its experts
// (WgmmaLaneExperts, WgmmaPassesOf), an inclusive prefix sum runs over the lanes, and the lane
// whose slots hold `slot` (the last lane when none does) finds the pass; exactly one lane stores.
WgmmaPass FindPassAsTheWarp(const std::vector<int32_t>& offsets, int rows, int slot) {
  const int experts = static_cast<int>(offsets.size()) - 1;
  int through = 0, stores = 0;
  WgmmaPass found{-2, 0, 0};
  for (int lane = 0; lane < kWgmmaSlotLanes; ++lane) {
    const int e_begin = WgmmaLaneExperts(experts, lane);
    const int e_end = WgmmaLaneExperts(experts, lane + 1);
    const int passes = WgmmaPassesOf(offsets.data(), rows, e_begin, e_end);
    through += passes;
    const int before = through - passes;
    if (slot >= before && (slot < through || lane == kWgmmaSlotLanes - 1)) {
      ++stores;
      found = WgmmaSlotPass(offsets.data(), rows, e_begin, e_end, before, slot);
    }
  }
  EXPECT_EQ(stores, 1) << "slot " << slot;
  return found;
}

// The slots of `offsets` over R = rows against `want`, the pairs expert-major (see
// CheckPassSlots).
void CheckSlotsAgainst(const std::vector<int32_t>& offsets, int rows,
                       const std::vector<WgmmaPass>& want) {
  const int experts = static_cast<int>(offsets.size()) - 1;
  const int pairs = static_cast<int>(want.size());
  const int64_t bound = WgmmaPassSlots(experts, rows);
  EXPECT_LE(pairs, bound);
  EXPECT_EQ(WgmmaPassesOf(offsets.data(), rows, 0, experts), pairs);
  std::vector<int> covered(rows, 0);
  std::set<std::pair<int, int>> seen;  // (expert, pass)
  for (int slot = 0; slot < bound + 3; ++slot) {
    const WgmmaPass grid = WgmmaSlotPass(offsets.data(), rows, 0, experts, 0, slot);
    const WgmmaPass warp = FindPassAsTheWarp(offsets, rows, slot);
    EXPECT_EQ(warp.expert, grid.expert) << "slot " << slot;
    if (slot >= pairs) {
      EXPECT_EQ(grid.expert, -1) << "slot " << slot;
      continue;
    }
    ASSERT_EQ(grid.expert, want[slot].expert) << "slot " << slot;
    ASSERT_EQ(grid.row0, want[slot].row0) << "slot " << slot;
    ASSERT_EQ(grid.tokens, want[slot].tokens) << "slot " << slot;
    EXPECT_EQ(warp.row0, grid.row0) << "slot " << slot;
    EXPECT_EQ(warp.tokens, grid.tokens) << "slot " << slot;
    EXPECT_GE(grid.tokens, 1);
    EXPECT_LE(grid.tokens, kWgmmaMaxPassTokens);
    const int pass = (grid.row0 - offsets[grid.expert]) / kWgmmaMaxPassTokens;
    EXPECT_TRUE(seen.insert({grid.expert, pass}).second) << "slot " << slot;
    for (int r = grid.row0; r < grid.row0 + grid.tokens; ++r) {
      ASSERT_LT(r, rows);
      ASSERT_LT(r, offsets[grid.expert + 1]);
      ++covered[r];
    }
  }
  for (int r = 0; r < rows; ++r) {
    EXPECT_EQ(covered[r], r < offsets[experts] ? 1 : 0) << "row " << r;
  }
}

// Every pass slot of experts with `counts` rows (offsets [0, c0, c0 + c1, ..]) over R = rows,
// which may end inside the experts' rows (the kernel clamps them at R): the (expert, pass) pairs
// expert-major, each once, covering every row of each expert below R once, then none up to the
// host's bound and past it; the kernel's warp finds the same pass as the whole grid's walk.
// Returns the pairs.
int CheckPassSlots(const std::vector<int>& counts, int rows) {
  const int experts = static_cast<int>(counts.size());
  SCOPED_TRACE(::testing::Message() << experts << " experts, R " << rows);
  std::vector<int32_t> offsets = {0};
  for (const int c : counts) offsets.push_back(offsets.back() + c);
  // The pairs, expert-major: expert e's rows below R in passes of 128.
  std::vector<WgmmaPass> want;
  for (int e = 0; e < experts; ++e) {
    const int end = offsets[e + 1] < rows ? offsets[e + 1] : rows;
    for (int row0 = offsets[e]; row0 < end; row0 += kWgmmaMaxPassTokens) {
      want.push_back(
          {e, row0, end - row0 < kWgmmaMaxPassTokens ? end - row0 : kWgmmaMaxPassTokens});
    }
    EXPECT_EQ(
        WgmmaExpertPasses(offsets[e], offsets[e + 1], rows),
        (end > offsets[e] ? end - offsets[e] + kWgmmaMaxPassTokens - 1 : 0) / kWgmmaMaxPassTokens)
        << "expert " << e;
  }
  CheckSlotsAgainst(offsets, rows, want);
  return static_cast<int>(want.size());
}

// `experts` random row counts summing to `rows`, a quarter of the experts (and more) empty, the
// rest skewed towards a few hot ones.
std::vector<int> RandomCounts(int experts, int rows, uint32_t seed) {
  std::vector<int> weights(experts);
  uint32_t state = seed;
  auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  int64_t total = 0;
  for (int& w : weights) {
    const uint32_t r = next();
    w = r % 4 == 0 ? 0 : static_cast<int>(1 + (r >> 2) % 7) * static_cast<int>(1 + (r >> 5) % 7);
    total += w;
  }
  std::vector<int> counts(experts, 0);
  int left = rows;
  for (int e = 0; e < experts && total > 0; ++e) {
    counts[e] = static_cast<int>(int64_t{rows} * weights[e] / total);
    left -= counts[e];
  }
  for (int e = 0; left > 0; e = (e + 1) % experts) {
    if (weights[e] > 0 || total == 0) {
      ++counts[e];
      --left;
    }
  }
  return counts;
}

TEST(WgmmaLayout, PassSlotsVisitEveryPassOnce) {
  CheckPassSlots({0, 0, 5, 0, 0}, 5);  // empty experts first, between and last
  CheckPassSlots({0, 0, 0}, 4);        // no pass at all (rows past offsets[E])
  EXPECT_EQ(CheckPassSlots({128}, 128), 1);
  EXPECT_EQ(CheckPassSlots({129}, 129), 2);
  EXPECT_EQ(CheckPassSlots({300}, 300), 3);
  EXPECT_EQ(CheckPassSlots({300}, 310), 3);  // spare rows past offsets[E]
  EXPECT_EQ(CheckPassSlots({0, 128, 129, 300, 0, 1}, 558), 7);
  // All the rows in one expert of 32.
  std::vector<int> one_hot(32, 0);
  one_hot[7] = 1536;
  EXPECT_EQ(CheckPassSlots(one_hot, 1536), 12);
  one_hot[7] = 1537;
  EXPECT_EQ(CheckPassSlots(one_hot, 1537), 13);
  one_hot[7] = 0;
  one_hot[31] = 1536;
  EXPECT_EQ(CheckPassSlots(one_hot, 1536), 12);
  // Offsets past R clamp: expert 1 keeps 80 of its 200 rows, expert 2 starts past R.
  EXPECT_EQ(CheckPassSlots({100, 200, 50}, 180), 2);
  EXPECT_EQ(CheckPassSlots({300}, 256), 2);  // cut at a pass boundary
  EXPECT_EQ(CheckPassSlots({300}, 255), 2);
  EXPECT_EQ(CheckPassSlots({5, 0, 7}, 3), 1);
  // The host's bound reached: 129 + 1 + 257 rows, 2 + 1 + 3 passes = 3 + floor(387 / 128).
  EXPECT_EQ(CheckPassSlots({129, 1, 257}, 387), WgmmaPassSlots(3, 387));
  // The decode step at batch 256: 256 tokens x 6 picks over 32 experts, balanced (hash-routed
  // layers) and skewed (top-k on the random bench model).
  EXPECT_EQ(CheckPassSlots(std::vector<int>(32, 48), 1536), 32);
  for (uint32_t seed = 1; seed <= 4; ++seed) CheckPassSlots(RandomCounts(32, 1536, seed), 1536);
  // Fewer experts than lanes, and more: lanes of several experts, the last lanes without any.
  CheckPassSlots({0}, 3);
  CheckPassSlots(RandomCounts(5, 700, 5), 700);
  CheckPassSlots(RandomCounts(33, 1536, 6), 1536);
  CheckPassSlots(RandomCounts(100, 3000, 7), 3000);
  CheckPassSlots(RandomCounts(257, 6000, 8), 6000);
  CheckPassSlots(RandomCounts(1024, 20000, 9), 19000);  // R inside the last experts' rows
}

// The producer warp's lanes split the experts into contiguous runs of ceil(E / 32) in order, every
// expert in one run.
TEST(WgmmaLayout, LaneExpertsPartitionTheExperts) {
  for (int experts = 1; experts <= 1024; ++experts) {
    EXPECT_EQ(WgmmaLaneExperts(experts, 0), 0);
    EXPECT_EQ(WgmmaLaneExperts(experts, kWgmmaSlotLanes), experts);
    for (int lane = 0; lane < kWgmmaSlotLanes; ++lane) {
      const int runs = WgmmaLaneExperts(experts, lane + 1) - WgmmaLaneExperts(experts, lane);
      EXPECT_GE(runs, 0) << experts << " experts, lane " << lane;
      EXPECT_LE(runs, (experts + kWgmmaSlotLanes - 1) / kWgmmaSlotLanes);
    }
  }
}

TEST(WgmmaLayout, AccumulatorFragmentMatchesPtxLayout) {
  for (int n = 16; n <= kWgmmaMaxPassTokens; n += 16) {
    std::set<int> seen;
    for (int t = 0; t < 128; ++t) {
      for (int v = 0; v < n / 2; ++v) {
        int row = -1, col = -1;
        AccumulatorReference(n, t, v, &row, &col);
        EXPECT_EQ(WgmmaAccumulatorRow(t, v), row) << "n " << n << " t " << t << " v " << v;
        EXPECT_EQ(WgmmaAccumulatorCol(t, v), col) << "n " << n << " t " << t << " v " << v;
        seen.insert(row * n + col);
      }
    }
    EXPECT_EQ(static_cast<int>(seen.size()), 64 * n);  // every element exactly once
  }
}

// The fused kernel's output of one (gate, up) pair in the emulation: injective on the sums the
// emulated products reach (|sum| <= 9 K < 2^15), standing in for the clamped SwiGLU.
int64_t CombineGateUp(int64_t gate, int64_t up) { return gate * 100000 + up; }

// The blocks of one expert's weight tile emulated, one a pass slot: out[row0 + t, col0 + j] =
// sum_k x[row0 + t, k] w[e, col0 + j, k] for the expert's tokens, through the slot mapping, the
// TMA model, the descriptors and the fragment mapping. The blocks share one shared memory, each
// finding the one before's data where it loads nothing.
// swiglu: the fused kernel's block, out[row0 + t, j] = CombineGateUp(x · w1[j], x · w3[j]) for
// its 64 columns (w holds w1's 64 rows, then w3's), the gate values passing through the exchange
// area as int16 (the kernel's bf16).
void EmulateBlock(int tokens, int64_t spare_rows, int k_dim, bool swiglu = false) {
  SCOPED_TRACE(::testing::Message() << "tokens " << tokens << " spare rows " << spare_rows << " K "
                                    << k_dim << (swiglu ? " swiglu" : ""));
  // One weight tile (col0 = 0, one expert): 128 rows of w, or 64 of w1 then 64 of w3.
  const int n_dim = swiglu ? kWgmmaGroupRows : kWgmmaBlockRows;  // output columns
  const int64_t row_begin = 5, row_end = row_begin + tokens;
  const int64_t rows = row_end + spare_rows;
  std::vector<int16_t> x(rows * k_dim), w(static_cast<int64_t>(kWgmmaBlockRows) * k_dim);
  uint32_t state = 12345;
  auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return static_cast<int16_t>(static_cast<int>((state >> 16) % 7) - 3);
  };
  for (auto& v : x) v = next();
  for (auto& v : w) v = next();
  const std::vector<int16_t> w1(w.begin(), w.begin() + int64_t{kWgmmaGroupRows} * k_dim);
  const std::vector<int16_t> w3(w.begin() + int64_t{kWgmmaGroupRows} * k_dim, w.end());
  // The ring at a 1024-aligned shared address past some static shared memory, as in the kernel.
  const int ring_base = 2 * kWgmmaSwizzleBytes;
  Smem smem(ring_base + kWgmmaRingBytes, 0xEE);  // garbage where nothing is loaded
  std::vector<int64_t> out(rows * n_dim, -999);
  const int num_k = k_dim / kWgmmaBlockK;
  // One expert of rows [row_begin, row_end): its pass slots.
  const int32_t offsets[2] = {static_cast<int32_t>(row_begin), static_cast<int32_t>(row_end)};
  int blocks = 0;
  for (int slot = 0; slot < WgmmaPassSlots(1, rows); ++slot) {
    const WgmmaPass pass = WgmmaSlotPass(offsets, static_cast<int>(rows), 0, 1, 0, slot);
    if (pass.expert < 0) continue;  // the block returns at once
    ++blocks;
    const int pass_row0 = pass.row0, pass_tokens = pass.tokens;
    const WgmmaRing ring = WgmmaRingFor(pass_tokens);
    const int boxes = ring.token_boxes;
    const int n = boxes * kWgmmaTokenBox;
    int stage = 0, last_stage = -1;
    std::vector<int64_t> acc(2 * 128 * (n / 2), 0);  // [group][thread][register]
    for (int kt = 0; kt < num_k; ++kt) {
      const int k0 = kt * kWgmmaBlockK;
      // Producer: the weight tile (one box of 128 rows, or w1's and w3's boxes of 64), then the
      // token boxes.
      if (swiglu) {
        TmaModel(smem, ring_base + WgmmaWeightOffset(ring, stage, 0), w1, 0, kWgmmaGroupRows,
                 kWgmmaGroupRows, k_dim, k0);
        TmaModel(smem, ring_base + WgmmaWeightOffset(ring, stage, 1), w3, 0, kWgmmaGroupRows,
                 kWgmmaGroupRows, k_dim, k0);
      } else {
        TmaModel(smem, ring_base + WgmmaWeightOffset(ring, stage, 0), w, 0, kWgmmaBlockRows,
                 kWgmmaBlockRows, k_dim, k0);
      }
      for (int b = 0; b < boxes; ++b) {
        TmaModel(smem, ring_base + WgmmaTokenOffset(ring, stage, b), x,
                 pass_row0 + b * kWgmmaTokenBox, rows, kWgmmaTokenBox, k_dim, k0);
      }
      // Consumers: four k16 wgmma a stage; thread t's register v accumulates D at the PTX
      // layout's (row, col).
      for (int g = 0; g < 2; ++g) {
        const uint32_t a = ring_base + WgmmaWeightOffset(ring, stage, g);
        const uint32_t b = ring_base + WgmmaTokenOffset(ring, stage, 0);
        for (int kk = 0; kk < kWgmmaBlockK / kWgmmaInstrK; ++kk) {
          const uint64_t da = WgmmaDescriptorK128(a + kk * 2 * kWgmmaInstrK);
          const uint64_t db = WgmmaDescriptorK128(b + kk * 2 * kWgmmaInstrK);
          for (int t = 0; t < 128; ++t) {
            for (int v = 0; v < n / 2; ++v) {
              int row = 0, col = 0;
              AccumulatorReference(n, t, v, &row, &col);
              int64_t sum = 0;
              for (int k = 0; k < kWgmmaInstrK; ++k) {
                sum += int64_t{WgmmaRead(smem, da, row, k)} * WgmmaRead(smem, db, col, k);
              }
              acc[(g * 128 + t) * (n / 2) + v] += sum;
            }
          }
        }
      }
      last_stage = stage;
      if (++stage == ring.stages) stage = 0;
    }
    ASSERT_EQ(last_stage, (num_k - 1) % ring.stages);  // the kernel's exchange stage
    if (swiglu) {
      // Warpgroup 0 stores its gate values in the last stage's weight tile (all of that stage's
      // reads done), warpgroup 1 loads them at its own registers' offsets.
      const int exchange = ring_base + WgmmaWeightOffset(ring, last_stage, 0);
      for (int t = 0; t < 128; ++t) {
        for (int v = 0; v < n / 2; v += 2) {
          const int at = WgmmaGateExchangeOffset(t, v);
          ASSERT_EQ(at % 4, 0);  // one 4-byte word a register pair
          ASSERT_EQ(WgmmaGateExchangeOffset(t, v + 1), at + 2);
          ASSERT_LE(at + 4, kWgmmaWeightTileBytes);  // inside the stage's weight tile
          for (int j = 0; j < 2; ++j) {
            const int64_t gate = acc[t * (n / 2) + v + j];
            ASSERT_LT(gate < 0 ? -gate : gate, 1 << 15);
            const int16_t stored = static_cast<int16_t>(gate);
            std::memcpy(&smem[exchange + at + 2 * j], &stored, 2);
          }
        }
      }
      for (int t = 0; t < 128; ++t) {
        for (int v = 0; v < n / 2; ++v) {
          const int token = WgmmaAccumulatorCol(t, v);
          if (token >= pass_tokens) continue;
          int16_t gate;
          std::memcpy(&gate, &smem[exchange + WgmmaGateExchangeOffset(t, v)], 2);
          out[(pass_row0 + token) * n_dim + WgmmaAccumulatorRow(t, v)] =
              CombineGateUp(gate, acc[(128 + t) * (n / 2) + v]);
        }
      }
      continue;
    }
    // Epilogue as the kernel stores it.
    for (int g = 0; g < 2; ++g) {
      for (int t = 0; t < 128; ++t) {
        for (int v = 0; v < n / 2; ++v) {
          const int token = WgmmaAccumulatorCol(t, v);
          if (token < pass_tokens) {
            out[(pass_row0 + token) * n_dim + g * 64 + WgmmaAccumulatorRow(t, v)] =
                acc[(g * 128 + t) * (n / 2) + v];
          }
        }
      }
    }
  }
  EXPECT_EQ(blocks, (tokens + kWgmmaMaxPassTokens - 1) / kWgmmaMaxPassTokens);
  for (int64_t r = 0; r < rows; ++r) {
    for (int j = 0; j < n_dim; ++j) {
      int64_t want = -999;  // rows outside the expert untouched
      if (r >= row_begin && r < row_end) {
        auto dot = [&](int w_row) {
          int64_t sum = 0;
          for (int k = 0; k < k_dim; ++k) sum += int64_t{x[r * k_dim + k]} * w[w_row * k_dim + k];
          return sum;
        };
        want = swiglu ? CombineGateUp(dot(j), dot(kWgmmaGroupRows + j)) : dot(j);
      }
      ASSERT_EQ(out[r * n_dim + j], want) << "row " << r << " col " << j;
    }
  }
}

TEST(WgmmaLayout, EmulatedBlockEqualsProduct) {
  // 1, 47, 64, 65 tokens: one pass of 1, 3, 4, 5 boxes; 200: blocks of 128 and 72 tokens (3 and
  // 4 stages); 300: 128, 128 and 44. K 448: seven K tiles, so every ring (3 to 6 stages) wraps;
  // no spare rows: the last boxes read past R.
  EmulateBlock(1, 0, 448);
  EmulateBlock(47, 9, 448);
  EmulateBlock(64, 0, 448);
  EmulateBlock(65, 3, 448);
  EmulateBlock(200, 0, 192);
  EmulateBlock(300, 5, 448);
}

TEST(WgmmaLayout, EmulatedSwiGluBlockExchangesGateExactly) {
  // As above for the fused kernel: one pass of 1, 3, 4, 5 boxes (the exchange area's 2 .. 10 KB),
  // 128 tokens (all 16 KB of the last stage's weight tile), two blocks for 200 (rings of 3 and 4
  // stages: the exchange in stage 2 of both after 3 K tiles, in stages 0 and 2 after 7), three for
  // 300; K 64: a pass of one stage.
  EmulateBlock(1, 0, 448, /*swiglu=*/true);
  EmulateBlock(47, 9, 448, /*swiglu=*/true);
  EmulateBlock(64, 0, 448, /*swiglu=*/true);
  EmulateBlock(65, 3, 448, /*swiglu=*/true);
  EmulateBlock(128, 0, 448, /*swiglu=*/true);
  EmulateBlock(200, 0, 192, /*swiglu=*/true);
  EmulateBlock(200, 0, 448, /*swiglu=*/true);
  EmulateBlock(200, 4, 64, /*swiglu=*/true);
  EmulateBlock(300, 0, 448, /*swiglu=*/true);
}

// The exchange area: each (thread, register) at its own 2 bytes, all within the 128 n bytes of a
// pass of n tokens (<= the 16 KB weight tile), a warp's 32 threads storing one register pair as
// 32 consecutive words (no bank conflict).
TEST(WgmmaLayout, GateExchangeOffsetsAreDistinctAndPacked) {
  for (int n = 16; n <= kWgmmaMaxPassTokens; n += 16) {
    std::set<int> seen;
    for (int t = 0; t < 128; ++t) {
      for (int v = 0; v < n / 2; ++v) {
        const int at = WgmmaGateExchangeOffset(t, v);
        EXPECT_GE(at, 0);
        EXPECT_LE(at + 2, 128 * n) << "n " << n << " t " << t << " v " << v;
        EXPECT_TRUE(seen.insert(at).second) << "n " << n << " t " << t << " v " << v;
        if (v % 2 == 0 && t % 32 != 0) {
          EXPECT_EQ(at, WgmmaGateExchangeOffset(t - 1, v) + 4);
        }
      }
    }
    EXPECT_EQ(static_cast<int>(seen.size()), 64 * n);
  }
  EXPECT_LE(128 * kWgmmaMaxPassTokens, kWgmmaWeightTileBytes);
}

}  // namespace
}  // namespace v4rl::kernels::plan
