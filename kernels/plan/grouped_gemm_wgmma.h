// Layout arithmetic of the Hopper grouped GEMM (kernels/cuda/grouped_gemm_wgmma.cu), shared by the
// kernel and its host test (tests/kernels/wgmma_layout_test.cc, which replays it on the CPU
// against the layouts the PTX ISA documents for TMA's 128-byte swizzle and wgmma.mma_async):
//  - the grid's pass slots: which (expert, pass over K of at most 128 tokens) a block computes;
//  - the shared-memory ring: each stage holds a [128 weight rows x 64 K] bf16 tile (16 KB), then
//    the tokens' [16 rows x 64 K] boxes (2 KB each), every row 128 bytes written by TMA with the
//    128-byte swizzle, every tile and box on a 1024-byte boundary (the swizzle's period, so the
//    descriptors' base offset is 0);
//  - the wgmma shared-memory descriptor of such a K-major operand;
//  - the f32 accumulator fragment of wgmma.m64nNk16: the (row, column) each register holds;
//  - the gate exchange of the fused w1 / w3 / clamped SwiGLU kernel: where consumer warpgroup 0
//    leaves its bf16-rounded gate values for warpgroup 1.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "kernels/plan/host_device.h"

namespace v4rl::kernels::plan {

// Weight rows (output columns) of a block: two consumer warpgroups of wgmma's M = 64.
inline constexpr int kWgmmaBlockRows = 128;
// Weight rows of one consumer warpgroup (wgmma's M); also the output columns of a block of the
// fused SwiGLU kernel, whose warpgroups take the same 64 rows of w1 (0) and w3 (1).
inline constexpr int kWgmmaGroupRows = kWgmmaBlockRows / 2;
// K of a stage: 64 bf16 = 128 bytes, one row of the 128-byte swizzle.
inline constexpr int kWgmmaBlockK = 64;
inline constexpr int kWgmmaRowBytes = 128;
// K of one wgmma.m64nNk16 (bf16): 32 bytes of a 128-byte row.
inline constexpr int kWgmmaInstrK = 16;
// Token rows of one TMA box; the wgmma n of a pass is the pass's boxes x 16.
inline constexpr int kWgmmaTokenBox = 16;
// Tokens of one pass over K: n <= 128 keeps the accumulators at 64 f32 registers a thread.
inline constexpr int kWgmmaMaxPassTokens = 128;
// Shared memory of the ring: two blocks an SM (2 x (110 KB + 1 KB alignment + 1 KB reserved)).
inline constexpr int kWgmmaRingBytes = 110 * 1024;
inline constexpr int kWgmmaMaxStages = 8;
inline constexpr int kWgmmaWeightTileBytes = kWgmmaBlockRows * kWgmmaRowBytes;  // 16 KB
inline constexpr int kWgmmaTokenBoxBytes = kWgmmaTokenBox * kWgmmaRowBytes;     // 2 KB
// The 128-byte swizzle repeats every 8 rows of 128 bytes.
inline constexpr int kWgmmaSwizzleBytes = 1024;

// The pass of one block. Grid y enumerates the (expert, pass) pairs expert-major, slot by slot:
// expert 0's passes, then expert 1's, .. (the blocks that stream the same weight tile for a hot
// expert's passes run side by side, the later ones reading it from L2). Expert e has the rows
// [offsets[e], min(offsets[e + 1], rows)) (offsets past R clamp at R; an expert without rows has
// no pass) and ceil(tokens / 128) passes: pass j has the tokens from offsets[e] + 128 j on, 128 of
// them except the last.
struct WgmmaPass {
  int expert;  // -1: a slot past the last pair (the block returns at once)
  int row0;    // the pass's first row of x and out
  int tokens;  // 1..kWgmmaMaxPassTokens
};

// Passes of the expert whose rows are [begin, min(end, rows)).
V4RL_HOST_DEVICE constexpr int WgmmaExpertPasses(int begin, int end, int rows) {
  const int tokens = (end < rows ? end : rows) - begin;
  return tokens > 0 ? (tokens + kWgmmaMaxPassTokens - 1) / kWgmmaMaxPassTokens : 0;
}

// The grid's y on the host, which cannot read the offsets: an upper bound of the pairs of E
// experts over R rows (offsets non-decreasing from 0). With t_e the experts' clamped row counts,
// sum t_e <= R, and ceil(t / 128) <= 1 + floor(t / 128), so the pairs are at most
// E + floor(R / 128).
V4RL_HOST_DEVICE constexpr int64_t WgmmaPassSlots(int64_t experts, int64_t rows) {
  return experts + rows / kWgmmaMaxPassTokens;
}

// The kernel finds its block's pass with one warp: lane l takes the experts
// [WgmmaLaneExperts(E, l), WgmmaLaneExperts(E, l + 1)) (ceil(E / 32) of them, the last lanes
// fewer or none), counts their passes (WgmmaPassesOf), a prefix sum over the lanes gives the
// slot of each lane's first pass, and the lane whose slots hold the block's one finds its pass
// (WgmmaSlotPass).
inline constexpr int kWgmmaSlotLanes = 32;
V4RL_HOST_DEVICE constexpr int WgmmaLaneExperts(int experts, int lane) {
  const int first = lane * ((experts + kWgmmaSlotLanes - 1) / kWgmmaSlotLanes);
  return first < experts ? first : experts;
}

// Passes of the experts [e_begin, e_end).
V4RL_HOST_DEVICE constexpr int WgmmaPassesOf(const int32_t* offsets, int rows, int e_begin,
                                             int e_end) {
  int passes = 0;
  for (int e = e_begin; e < e_end; ++e) {
    passes += WgmmaExpertPasses(offsets[e], offsets[e + 1], rows);
  }
  return passes;
}

// The pass of slot `slot` among the experts [e_begin, e_end), whose first pass is slot `before`;
// expert -1 if the slot is not theirs. The whole grid's: WgmmaSlotPass(offsets, rows, 0, E, 0,
// slot).
V4RL_HOST_DEVICE constexpr WgmmaPass WgmmaSlotPass(const int32_t* offsets, int rows, int e_begin,
                                                   int e_end, int before, int slot) {
  if (slot < before) return {-1, 0, 0};
  for (int e = e_begin; e < e_end; ++e) {
    const int passes = WgmmaExpertPasses(offsets[e], offsets[e + 1], rows);
    if (slot < before + passes) {
      const int row0 = offsets[e] + (slot - before) * kWgmmaMaxPassTokens;
      const int row_end = offsets[e + 1] < rows ? offsets[e + 1] : rows;
      const int tokens = row_end - row0;
      return {e, row0, tokens < kWgmmaMaxPassTokens ? tokens : kWgmmaMaxPassTokens};
    }
    before += passes;
  }
  return {-1, 0, 0};
}

// The ring of one block: the stage layout follows its pass's tokens (fewer tokens: smaller
// stages, more of them in flight).
struct WgmmaRing {
  int token_boxes;  // boxes of the pass: ceil(min(tokens, 128) / 16)
  int stage_bytes;  // weight tile + token_boxes boxes
  int stages;       // as many as fit kWgmmaRingBytes, at most kWgmmaMaxStages
};

V4RL_HOST_DEVICE constexpr WgmmaRing WgmmaRingFor(int tokens) {
  const int pass = tokens < kWgmmaMaxPassTokens ? tokens : kWgmmaMaxPassTokens;
  const int boxes = (pass + kWgmmaTokenBox - 1) / kWgmmaTokenBox;
  const int stage_bytes = kWgmmaWeightTileBytes + boxes * kWgmmaTokenBoxBytes;
  const int fit = kWgmmaRingBytes / stage_bytes;
  return {boxes, stage_bytes, fit < kWgmmaMaxStages ? fit : kWgmmaMaxStages};
}

// Byte offsets inside the ring: the weight rows of consumer warpgroup `group` (0 or 1) in stage
// `stage`, and token box `box` of that stage.
V4RL_HOST_DEVICE constexpr int WgmmaWeightOffset(const WgmmaRing& ring, int stage, int group) {
  return stage * ring.stage_bytes + group * kWgmmaGroupRows * kWgmmaRowBytes;
}
V4RL_HOST_DEVICE constexpr int WgmmaTokenOffset(const WgmmaRing& ring, int stage, int box) {
  return stage * ring.stage_bytes + kWgmmaWeightTileBytes + box * kWgmmaTokenBoxBytes;
}

// The wgmma shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format") of a K-major
// bf16 operand whose rows are 128 bytes (64 K values) with the 128-byte swizzle, starting at
// shared address `address` (the operand's row 0 at K step kk of a stage: the tile's address,
// 1024-byte aligned, plus 32 * kk; the swizzle is a function of the address bits, so moving the
// start along the row selects the next 16 K values):
//   bits  0-13  start address >> 4
//   bits 16-29  leading-dimension byte offset >> 4: unused by swizzled K-major layouts ("assumed
//               1"), set to 1
//   bits 32-45  stride-dimension byte offset >> 4: 1024 bytes from one 8-row group to the next
//   bits 49-51  base offset 0 (the swizzle pattern starts on a 1024-byte boundary)
//   bits 62-63  swizzle mode 1: 128-byte swizzle
V4RL_HOST_DEVICE constexpr uint64_t WgmmaDescriptorK128(uint32_t address) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (static_cast<uint64_t>(kWgmmaSwizzleBytes >> 4) << 32) | (uint64_t{1} << 62);
}

// The descriptor of an MN-major bf16 operand (the backward GEMMs' transposed operands: the rows
// TMA wrote are K, each row 64 M or N values = 128 bytes, with the 128-byte swizzle), from the
// canonical layout ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO)) in 16-byte units T:
//   bits 16-29  leading-dimension byte offset >> 4: from one 64-value atom of M or N to the next
//               (`atom_bytes`: the next TMA box), read only where the operand spans more than 64
//   bits 32-45  stride-dimension byte offset >> 4: 1024 bytes from one 8-row group of K to the
//               next
// The other fields as WgmmaDescriptorK128. The next K step of 16 starts 16 rows = 2048 bytes on
// (kWgmmaMnKStepBytes), which keeps the swizzle's 1024-byte phase.
inline constexpr int kWgmmaMnKStepBytes = kWgmmaInstrK * kWgmmaRowBytes;
V4RL_HOST_DEVICE constexpr uint64_t WgmmaDescriptorMn128(uint32_t address, uint32_t atom_bytes) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((atom_bytes & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>(kWgmmaSwizzleBytes >> 4) << 32) | (uint64_t{1} << 62);
}

// Accumulator register i (0 <= i < n / 2) of thread `thread` (0..127 in its warpgroup) of
// wgmma.m64nNk16 with f32 D: warp w holds rows 16w..16w+15; a thread's registers come in fours,
// one per 8 columns, {row r, col c}, {r, c + 1}, {r + 8, c}, {r + 8, c + 1}.
V4RL_HOST_DEVICE constexpr int WgmmaAccumulatorRow(int thread, int i) {
  return 16 * (thread / 32) + (thread % 32) / 4 + 8 * ((i / 2) % 2);
}
V4RL_HOST_DEVICE constexpr int WgmmaAccumulatorCol(int thread, int i) {
  return 8 * (i / 4) + 2 * (thread % 4) + i % 2;
}

// The fused SwiGLU kernel's gate exchange. Both warpgroups hold the same 64 weight rows (w1's in
// warpgroup 0, w3's in 1) times the same tokens, so thread t's register i of one is the same
// (output column, token) as thread t's register i of the other: warpgroup 0 stores register i
// rounded to bf16 at byte WgmmaGateExchangeOffset(t, i) of the exchange area (registers i and
// i + 1, i even, as one 4-byte word: a warp's 32 threads store 128 consecutive bytes), warpgroup 1
// loads it from there. The area is the weight tile of the pass's last stage (16 KB =
// 64 rows x 128 tokens x 2 bytes), reused once every consumer is done with that stage.
V4RL_HOST_DEVICE constexpr int WgmmaGateExchangeOffset(int thread, int i) {
  return ((i / 2) * 128 + thread) * 4 + (i % 2) * 2;
}

}  // namespace v4rl::kernels::plan
