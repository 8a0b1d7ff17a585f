#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/indexer.h"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kSelectThreads = 512;  // >= 256: the bin walk gives each bin a thread

// Monotone map of a score to uint32: a higher key ranks first; -0 equals +0; NaN lowest.
__device__ __forceinline__ uint32_t OrderKey(float f) {
  if (f != f) return 0u;
  if (f == 0.0f) f = 0.0f;
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive prefix sum over a block of kThreads threads; *total gets the sum.
// `scratch` holds kThreads / 32 + 1 words of shared memory.
template <int kThreads = kSelectThreads>
__device__ uint32_t BlockExclusiveScan(uint32_t v, uint32_t* total, uint32_t* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t inclusive = v;
  for (int offset = 1; offset < 32; offset *= 2) {
    const uint32_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t run = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      const uint32_t t = scratch[w];
      scratch[w] = run;
      run += t;
    }
    scratch[kThreads / 32] = run;
  }
  __syncthreads();
  *total = scratch[kThreads / 32];
  return scratch[warp] + inclusive - v;
}

struct WideRowState;

struct SelectParams {
  const float* scores;
  int32_t* topk_idx;
  int64_t num_keys, ld, topk, q_pos0, ratio;
  // Few long rows (the wide path below): per row a WideRowState, and per row `tiles` look-back
  // words of the emission; both zeroed before the first launch.
  WideRowState* wide;
  uint64_t* tile_states;
  int64_t tiles;
};

constexpr int kPerThread = 8;  // consecutive scores a thread handles per tile
constexpr int64_t kTile = int64_t{kSelectThreads} * kPerThread;

// The keys a selection ranks, by position s in [0, size): a row's scores from `offset` on.
struct RowKeys {
  const float* row;
  int64_t offset, size;
  __device__ bool Valid(int64_t s) const { return s < size; }
  __device__ uint32_t Key(int64_t s) const { return OrderKey(row[offset + s]); }
  __device__ int32_t Id(int64_t s) const { return static_cast<int32_t>(offset + s); }
};

// A row's keys already in order-key form (staged in shared memory), ids offset + s.
struct StagedKeys {
  const uint32_t* keys;
  int64_t offset, size;
  __device__ bool Valid(int64_t s) const { return s < size; }
  __device__ uint32_t Key(int64_t s) const { return keys[s]; }
  __device__ int32_t Id(int64_t s) const { return static_cast<int32_t>(offset + s); }
};

// Rows of at most kStagedKeys scores are copied into shared memory once as order keys, so the
// five passes of SelectTopK read shared memory instead of global (latency-bound for one block).
constexpr int64_t kStagedKeys = 2 * kTile;
constexpr size_t kStagedBytes = kStagedKeys * sizeof(uint32_t);

__device__ __forceinline__ void StageRow(const float* row, int64_t n, uint32_t* staged) {
  for (int64_t start = 0; start < n; start += kTile) {
    const int64_t s = start + int64_t{threadIdx.x} * kPerThread;
    float v[kPerThread];
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) v[u] = s + u < n ? row[s + u] : 0.0f;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      if (s + u < n) staged[s + u] = OrderKey(v[u]);
    }
  }
  __syncthreads();
}

// Keys [s, s + kPerThread); invalid ones are 0 and flagged (never counted, never taken).
template <typename Keys>
__device__ __forceinline__ void TileKeys(const Keys& keys, int64_t s, uint32_t key[kPerThread],
                                         bool valid[kPerThread]) {
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    valid[u] = keys.Valid(s + u);
    key[u] = valid[u] ? keys.Key(s + u) : 0u;
  }
}

// The top `topk` of keys.size keys (more than topk of them valid) into out, ids ascending: radix
// select (4 passes of 8 bits) of the k-th key, then one ordered pass emitting every id above it
// plus the lowest ids equal to it. Each thread takes kPerThread consecutive keys of a tile of
// kTile, so every load batch keeps 8 loads in flight and the ordered pass needs one block scan per
// tile. Called by every thread of a kSelectThreads block.
template <typename Keys>
__device__ void SelectTopK(const Keys& keys, int64_t topk, int32_t* out) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t scratch[kSelectThreads / 32 + 1];
  __shared__ uint32_t shared_prefix, shared_remaining;
  constexpr uint32_t kNoBin = 256;
  const int64_t n = keys.size;
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0, mask = 0, remaining = static_cast<uint32_t>(topk);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t start = 0; start < n; start += kTile) {
      const int64_t s = start + int64_t{threadIdx.x} * kPerThread;
      uint32_t key[kPerThread];
      bool valid[kPerThread];
      TileKeys(keys, s, key, valid);
      // Warp-aggregated: the leading bytes of nearby scores mostly agree, so one atomic per
      // distinct bin of the warp instead of up to 32 on one address.
#pragma unroll
      for (int u = 0; u < kPerThread; ++u) {
        const uint32_t bin =
            valid[u] && (key[u] & mask) == prefix ? (key[u] >> shift) & 0xFFu : kNoBin;
        const uint32_t peers = __match_any_sync(0xffffffffu, bin);
        if (bin != kNoBin && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
      }
    }
    __syncthreads();
    // The bin holding the remaining-th key from the top: thread j scans bin 255 - j, the exclusive
    // scan gives the keys in higher bins, and exactly one thread's bin covers the remaining picks
    // (instead of one thread walking the 256 bins serially).
    const uint32_t bin = 255 - threadIdx.x;
    const uint32_t count = threadIdx.x < 256 ? hist[bin] : 0u;
    uint32_t unused = 0;
    const uint32_t above = BlockExclusiveScan(count, &unused, scratch);
    if (threadIdx.x < 256 && above < remaining && above + count >= remaining) {
      shared_prefix = prefix | (bin << shift);
      shared_remaining = remaining - above;
    }
    __syncthreads();
    prefix = shared_prefix;
    remaining = shared_remaining;
    mask |= 0xFFu << shift;
  }
  // prefix is the k-th key; the `remaining` lowest ids equal to it are taken. Per tile one scan of
  // (above count, equal count) packed in 16 bits each (at most kTile = 4096 per tile).
  uint32_t emitted = 0, equal_seen = 0;
  for (int64_t start = 0; start < n; start += kTile) {
    const int64_t s = start + int64_t{threadIdx.x} * kPerThread;
    uint32_t key[kPerThread];
    bool valid[kPerThread];
    TileKeys(keys, s, key, valid);
    uint32_t above = 0, equal = 0;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      above += valid[u] && key[u] > prefix ? 1u : 0u;
      equal += valid[u] && key[u] == prefix ? 1u : 0u;
    }
    uint32_t total = 0;
    const uint32_t before = BlockExclusiveScan((equal << 16) | above, &total, scratch);
    const uint32_t above_before = before & 0xFFFFu, equal_before = equal_seen + (before >> 16);
    // Equal ids taken before this thread's: the first `remaining` equals of the row.
    auto taken = [&](uint32_t equals) { return equals < remaining ? equals : remaining; };
    uint32_t position = emitted + above_before + taken(equal_before) - taken(equal_seen);
    uint32_t equal_rank = equal_before;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      if (!valid[u]) continue;
      bool selected = key[u] > prefix;
      if (key[u] == prefix) selected = equal_rank++ < remaining;
      if (!selected) continue;
      out[position++] = keys.Id(s + u);
    }
    emitted += (total & 0xFFFFu) + taken(equal_seen + (total >> 16)) - taken(equal_seen);
    equal_seen += total >> 16;
  }
}

// Ids [begin, end) then -1 up to topk (a range of at most topk keys takes all of them).
__device__ __forceinline__ void TakeAll(int64_t begin, int64_t end, int64_t topk, int32_t* out) {
  for (int64_t s = threadIdx.x; s < topk; s += blockDim.x) {
    out[s] = begin + s < end ? static_cast<int32_t>(begin + s) : -1;
  }
}

__device__ __forceinline__ int64_t VisibleKeys(const SelectParams& p, int64_t i) {
  return Min64(plan::NumVisibleCompressed(p.q_pos0 + i, p.ratio), p.num_keys);
}

// One block per query over its whole row (staged in shared memory when it fits).
__global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectParams p) {
  WaitForPriorKernels();
  extern __shared__ uint32_t staged[];
  const int64_t i = blockIdx.x;
  int32_t* out = p.topk_idx + i * p.topk;
  const int64_t n = VisibleKeys(p, i);
  if (n <= p.topk) return TakeAll(0, n, p.topk, out);
  const float* row = p.scores + i * p.ld;
  if (n > kStagedKeys) {
    SelectTopK(RowKeys{row, 0, n}, p.topk, out);
    return;
  }
  StageRow(row, n, staged);
  SelectTopK(StagedKeys{staged, 0, n}, p.topk, out);
}

// Few long rows (single-stream decode at long context: 250K keys a row at 1M tokens). One block a
// row (SelectKernel) would be latency-bound, so every pass spreads a row over tiles of kWideTile
// scores, one block each, and no block waits on another except in the emission's look-back:
//   WideHistogramKernel<0>  histogram of key bits [31:21] of every visible key;
//   WideHistogramKernel<1>  every block finds the level-0 bin holding the k-th key from that
//                           histogram, then histograms bits [20:10] of the keys in it;
//   WideHistogramKernel<2>  the same one level down, bits [9:0];
//   WideEmitKernel          every block finds the k-th key (all 32 bits) and how many keys equal
//                           to it are taken (the lowest ids), counts its tile's keys above and
//                           equal, gets the counts of the tiles before it by decoupled look-back
//                           and writes its picks straight to their ascending-id places.
// Exact radix select over the whole row: no candidate buffer, so ties, all-equal rows, NaN or
// -inf padding (DecodeIndexerScores) cost the same as any row. The histograms and tickets come
// zeroed by one memset before the first kernel; each level's block 0 records its bin's prefix for
// the next kernel. Launch count and grids depend on rows and num_keys only (CUDA graphs).
constexpr int kWideThreads = 256;
constexpr int kWidePerThread = 8;  // scores per thread, kWideThreads apart (coalesced loads)
constexpr int64_t kWideTile = int64_t{kWideThreads} * kWidePerThread;
constexpr int kWideWarps = kWideThreads / 32;

// Radix level L: bits [kShift, kShift + kBits) of the order key, among keys whose bits above
// agree with the prefix found so far (kPrefixMask).
template <int kLevel>
struct WideLevel {
  static_assert(kLevel >= 0 && kLevel <= 2);
  static constexpr int kShift = kLevel == 0 ? 21 : kLevel == 1 ? 10 : 0;
  static constexpr int kBits = kLevel == 2 ? 10 : 11;
  static constexpr uint32_t kBins = 1u << kBits;
  static constexpr uint32_t kPrefixMask = kLevel == 0 ? 0u : ~0u << (kLevel == 1 ? 21 : 10);
  static constexpr int kOffset = kLevel == 0 ? 0 : kLevel == 1 ? 2048 : 4096;  // in hist
  static_assert(kBins % kWideThreads == 0);
};

struct WideRowState {
  uint32_t hist[2048 + 2048 + 1024];  // the levels' histograms (WideLevel::kOffset)
  uint32_t prefix[2], remaining[2];   // level 0's and 1's bin: key prefix, picks left in it
  uint32_t ticket;                    // emission tiles handed out
  uint32_t unused;
};
static_assert(sizeof(WideRowState) % sizeof(uint64_t) == 0);  // look-back words follow the rows

// Look-back word of an emission tile: status in bits 62-63, keys equal to the k-th in bits
// 31-61, keys above it in bits 0-30 (both below 2^31: ids are int32).
constexpr uint64_t kTileAggregate = uint64_t{1} << 62;  // counts of this tile alone
constexpr uint64_t kTilePrefix = uint64_t{2} << 62;     // counts of tiles 0 .. this one
constexpr uint64_t kTileCountMask = (uint64_t{1} << 31) - 1;

__device__ __forceinline__ uint64_t LoadRelaxed(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.relaxed.gpu.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void StoreRelaxed(uint64_t* p, uint64_t v) {
  asm volatile("st.relaxed.gpu.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// Scores base + u · kWideThreads + threadIdx.x of the row as order keys; past n: invalid.
__device__ __forceinline__ void WideTileKeys(const float* row, int64_t base, int64_t n,
                                             uint32_t key[kWidePerThread],
                                             bool valid[kWidePerThread]) {
  float v[kWidePerThread];
#pragma unroll
  for (int u = 0; u < kWidePerThread; ++u) {
    const int64_t s = base + int64_t{u} * kWideThreads + threadIdx.x;
    valid[u] = s < n;
    v[u] = valid[u] ? row[s] : 0.0f;
  }
#pragma unroll
  for (int u = 0; u < kWidePerThread; ++u) key[u] = OrderKey(v[u]);
}

// The bin of level kLevel's finished histogram that holds the remaining-th key from the top
// (1 <= remaining <= keys counted): *bin, and in *left the picks still to take inside it. Thread
// t sums kBins / kWideThreads consecutive bins from the top, one block scan gives the keys in
// higher bins, and exactly one thread's bins cover the remaining-th. Synchronises the block.
template <int kLevel>
__device__ void WideThresholdBin(const WideRowState& st, uint32_t remaining, uint32_t* scratch,
                                 uint32_t* bin, uint32_t* left) {
  using L = WideLevel<kLevel>;
  constexpr int kPer = L::kBins / kWideThreads;
  __shared__ uint32_t shared_bin, shared_left;
  const uint32_t top = L::kBins - 1 - threadIdx.x * kPer;
  uint32_t count[kPer], sum = 0;
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    count[u] = __ldcg(&st.hist[L::kOffset + top - u]);  // the previous kernel's atomics
    sum += count[u];
  }
  uint32_t unused = 0;
  uint32_t above = BlockExclusiveScan<kWideThreads>(sum, &unused, scratch);
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    if (above < remaining && above + count[u] >= remaining) {
      shared_bin = top - u;
      shared_left = remaining - above;
    }
    above += count[u];
  }
  __syncthreads();
  *bin = shared_bin;
  *left = shared_left;
}

// The key prefix and picks left after levels 0 .. kLevel - 1 (for kLevel > 0: from level
// kLevel - 1's histogram, with what block 0 of the previous kernel recorded for the levels
// before); block 0 records them for the next kernel. Synchronises the block.
template <int kLevel>
__device__ void WidePrefix(WideRowState& st, int64_t topk, uint32_t* scratch, uint32_t* prefix,
                           uint32_t* remaining) {
  *prefix = 0;
  *remaining = static_cast<uint32_t>(topk);
  if constexpr (kLevel > 0) {
    if constexpr (kLevel > 1) {
      *prefix = __ldcg(&st.prefix[kLevel - 2]);
      *remaining = __ldcg(&st.remaining[kLevel - 2]);
    }
    uint32_t bin = 0, left = 0;
    WideThresholdBin<kLevel - 1>(st, *remaining, scratch, &bin, &left);
    *prefix |= bin << WideLevel<kLevel - 1>::kShift;
    *remaining = left;
    if constexpr (kLevel < 3) {
      if (blockIdx.x == 0 && threadIdx.x == 0) {
        st.prefix[kLevel - 1] = *prefix;
        st.remaining[kLevel - 1] = *remaining;
      }
    }
  }
}

// Grid (tiles, rows): block (t, i) adds the level's histogram of row i's tile t (keys in the
// bin chosen so far) to the row's. Rows of at most topk visible keys take no part.
template <int kLevel>
__global__ void __launch_bounds__(kWideThreads) WideHistogramKernel(SelectParams p) {
  WaitForPriorKernels();
  using L = WideLevel<kLevel>;
  __shared__ uint32_t hist[L::kBins];
  __shared__ uint32_t scratch[kWideWarps + 1];
  constexpr uint32_t kNoBin = ~0u;
  const int64_t i = blockIdx.y;
  const int64_t n = VisibleKeys(p, i);
  const int64_t base = blockIdx.x * kWideTile;
  if (n <= p.topk || base >= n) return;
  WideRowState& st = p.wide[i];
  uint32_t key[kWidePerThread];
  bool valid[kWidePerThread];
  WideTileKeys(p.scores + i * p.ld, base, n, key, valid);  // in flight during the bin search
  uint32_t prefix = 0, remaining = 0;
  WidePrefix<kLevel>(st, p.topk, scratch, &prefix, &remaining);
  for (uint32_t b = threadIdx.x; b < L::kBins; b += kWideThreads) hist[b] = 0;
  __syncthreads();
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int u = 0; u < kWidePerThread; ++u) {
    const uint32_t bin = valid[u] && (key[u] & L::kPrefixMask) == prefix
                             ? (key[u] >> L::kShift) & (L::kBins - 1)
                             : kNoBin;
    // Warp-aggregated: ties and -inf padding put whole warps on one bin.
    const uint32_t peers = __match_any_sync(0xffffffffu, bin);
    if (bin != kNoBin && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
  }
  __syncthreads();
  for (uint32_t b = threadIdx.x; b < L::kBins; b += kWideThreads) {
    if (hist[b] != 0) atomicAdd(&st.hist[L::kOffset + b], hist[b]);
  }
}

// Grid (tiles, rows). Tiles go out by ticket, so every tile a block looks back at belongs to a
// block already running (one that never waits before publishing its counts): no deadlock
// whatever order the blocks are scheduled in. Row i's picks are the keys above the k-th key
// plus the `take` lowest ids equal to it; a pick's place is the number of picks before it in id
// order: (keys above before it) + min(keys equal before it, take).
__global__ void __launch_bounds__(kWideThreads) WideEmitKernel(SelectParams p) {
  WaitForPriorKernels();
  __shared__ uint32_t scratch[kWideWarps + 1];
  // (equal << 16 | above) of each (u, warp) group of 32 keys, then the exclusive sums in id
  // order (u-major: key base + u · kWideThreads + warp · 32 + lane); a tile holds < 2^16 keys.
  __shared__ uint32_t groups[kWidePerThread * kWideWarps];
  __shared__ uint32_t shared_tile, shared_above, shared_equal;
  const int64_t i = blockIdx.y;
  int32_t* out = p.topk_idx + i * p.topk;
  const int64_t n = VisibleKeys(p, i);
  if (n <= p.topk) {
    if (blockIdx.x == 0) TakeAll(0, n, p.topk, out);
    return;
  }
  WideRowState& st = p.wide[i];
  if (threadIdx.x == 0) shared_tile = atomicAdd(&st.ticket, 1u);
  uint32_t kth = 0, take = 0;
  WidePrefix<3>(st, p.topk, scratch, &kth, &take);  // synchronises: shared_tile is set
  const int64_t tile = shared_tile;
  const int64_t base = tile * kWideTile;
  if (base >= n) return;  // past the row: later tickets only, nobody looks back at it
  uint32_t key[kWidePerThread];
  bool valid[kWidePerThread];
  WideTileKeys(p.scores + i * p.ld, base, n, key, valid);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t above_votes[kWidePerThread], equal_votes[kWidePerThread];
#pragma unroll
  for (int u = 0; u < kWidePerThread; ++u) {
    above_votes[u] = __ballot_sync(0xffffffffu, valid[u] && key[u] > kth);
    equal_votes[u] = __ballot_sync(0xffffffffu, valid[u] && key[u] == kth);
    if (lane == 0) {
      groups[u * kWideWarps + warp] = (__popc(equal_votes[u]) << 16) | __popc(above_votes[u]);
    }
  }
  __syncthreads();
  if (warp == 0) {
    constexpr int kPerLane = kWidePerThread * kWideWarps / 32;
    uint32_t g[kPerLane], local = 0;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      g[e] = groups[lane * kPerLane + e];
      local += g[e];
    }
    uint32_t inclusive = local;
    for (int offset = 1; offset < 32; offset *= 2) {
      const uint32_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    uint32_t run = inclusive - local;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      groups[lane * kPerLane + e] = run;
      run += g[e];
    }
    const uint32_t total = __shfl_sync(0xffffffffu, inclusive, 31);
    const uint64_t counts = (uint64_t{total >> 16} << 31) | (total & 0xFFFFu);
    uint64_t* states = p.tile_states + i * p.tiles;
    if (lane == 0) StoreRelaxed(&states[tile], (tile == 0 ? kTilePrefix : kTileAggregate) | counts);
    // Decoupled look-back: 32 tiles at a time back to the nearest one whose prefix is out.
    uint32_t above_before = 0, equal_before = 0;
    for (int64_t end = tile; end > 0; end -= 32) {
      const int64_t j = end - 1 - lane;
      uint64_t word = kTilePrefix;  // before tile 0: an empty prefix
      if (j >= 0) {
        do {
          word = LoadRelaxed(&states[j]);
        } while ((word >> 62) == 0);
      }
      const uint32_t prefixes = __ballot_sync(0xffffffffu, (word & kTilePrefix) != 0);
      const int nearest = prefixes != 0 ? __ffs(prefixes) - 1 : 31;
      const bool counted = lane <= nearest;
      above_before += __reduce_add_sync(
          0xffffffffu, counted ? static_cast<uint32_t>(word & kTileCountMask) : 0u);
      equal_before += __reduce_add_sync(
          0xffffffffu, counted ? static_cast<uint32_t>((word >> 31) & kTileCountMask) : 0u);
      if (prefixes != 0) break;
    }
    if (lane == 0) {
      if (tile > 0) {
        const uint64_t through =
            (uint64_t{equal_before + (total >> 16)} << 31) | (above_before + (total & 0xFFFFu));
        StoreRelaxed(&states[tile], kTilePrefix | through);
      }
      shared_above = above_before;
      shared_equal = equal_before;
    }
  }
  __syncthreads();
  const uint32_t lower_lanes = (1u << lane) - 1;
#pragma unroll
  for (int u = 0; u < kWidePerThread; ++u) {
    const uint32_t group = groups[u * kWideWarps + warp];
    const uint32_t above = shared_above + (group & 0xFFFFu) + __popc(above_votes[u] & lower_lanes);
    const uint32_t equal = shared_equal + (group >> 16) + __popc(equal_votes[u] & lower_lanes);
    const bool is_above = (above_votes[u] >> lane) & 1u, is_equal = (equal_votes[u] >> lane) & 1u;
    if (!is_above && !(is_equal && equal < take)) continue;
    out[above + (equal < take ? equal : take)] =
        static_cast<int32_t>(base + int64_t{u} * kWideThreads + threadIdx.x);
  }
}

struct ReduceParams {
  const float* logits;   // [chunk · heads, num_keys]
  const float* weights;  // [num_q, heads], rows of the chunk
  float* scores;         // [chunk, num_keys]
  int64_t chunk, heads, num_keys;
  float score_scale;
};

// scores[i, s] = Σ_h max(logit, 0) · score_scale · w[i, h], heads in order (as the CPU).
__global__ void ReduceHeadsKernel(ReduceParams p) {
  WaitForPriorKernels();
  const int64_t total = p.chunk * p.num_keys;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e / p.num_keys, s = e % p.num_keys;
    float sum = 0.0f;
    for (int64_t h = 0; h < p.heads; ++h) {
      sum += fmaxf(p.logits[(i * p.heads + h) * p.num_keys + s], 0.0f) * p.score_scale *
             p.weights[i * p.heads + h];
    }
    p.scores[e] = sum;
  }
}

absl::Status LaunchSelect(const float* scores, int64_t ld, int64_t rows, int64_t num_keys,
                          int64_t q_pos0, int64_t ratio, int32_t* topk_idx, int64_t topk) {
  if (rows == 0 || topk == 0) return absl::OkStatus();
  SelectParams p{scores, topk_idx, num_keys, ld, topk, q_pos0, ratio};
  static const cudaError_t attribute = cudaFuncSetAttribute(
      SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kStagedBytes));
  if (attribute != cudaSuccess) {
    return absl::InternalError(
        absl::StrFormat("cuda::IndexerSelect: shared memory: %s", cudaGetErrorString(attribute)));
  }
  // Few long rows: the wide path, every pass over all SMs (a block a row would be latency-bound).
  constexpr int64_t kMaxWideRows = 16;
  if (rows <= kMaxWideRows && num_keys > 2 * kStagedKeys) {
    p.tiles = (num_keys + kWideTile - 1) / kWideTile;
    // Row states and look-back words from the stream-ordered cache (free again once the
    // launches are queued), zeroed on the stream.
    const int64_t state_bytes = rows * static_cast<int64_t>(sizeof(WideRowState));
    const int64_t bytes = state_bytes + rows * p.tiles * static_cast<int64_t>(sizeof(uint64_t));
    const core::Tensor scratch =
        core::Tensor::Empty(core::DType::kU8, {bytes}, CachingDeviceAllocator());
    auto* base = static_cast<char*>(scratch.view().data);
    p.wide = reinterpret_cast<WideRowState*>(base);
    p.tile_states = reinterpret_cast<uint64_t*>(base + state_bytes);
    if (cudaError_t e = cudaMemsetAsync(base, 0, bytes, LaunchStream()); e != cudaSuccess) {
      return absl::InternalError(
          absl::StrFormat("cuda::IndexerSelect: memset: %s", cudaGetErrorString(e)));
    }
    const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(rows));
    LaunchKernel(WideHistogramKernel<0>, grid, kWideThreads, 0, p);
    LaunchKernel(WideHistogramKernel<1>, grid, kWideThreads, 0, p);
    LaunchKernel(WideHistogramKernel<2>, grid, kWideThreads, 0, p);
    LaunchKernel(WideEmitKernel, grid, kWideThreads, 0, p);
    return LaunchStatus("cuda::IndexerSelect");
  }
  LaunchKernel(SelectKernel, static_cast<unsigned>(rows), kSelectThreads, kStagedBytes, p);
  return LaunchStatus("cuda::IndexerSelect");
}

}  // namespace

int64_t IndexerTopKWorkspaceFloats(int64_t q_chunk, int64_t heads, int64_t num_keys) {
  return q_chunk * heads * num_keys + q_chunk * num_keys;
}

absl::Status IndexerSelect(const core::TensorView& scores, int64_t q_pos0, int64_t ratio,
                           const core::TensorView& topk_idx) {
  const char* op = "cuda::IndexerSelect";
  if (absl::Status s = CheckDeviceView(op, "scores", scores, {core::DType::kF32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckDeviceView(op, "topk_idx", topk_idx, {core::DType::kI32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckArg(scores.rank == 2 && topk_idx.rank == 2 &&
                                    topk_idx.shape[0] == scores.shape[0] && ratio > 0,
                                op, "scores [num_q, num_keys], topk_idx [num_q, k], ratio > 0");
      !s.ok()) {
    return s;
  }
  return LaunchSelect(scores.data_as<float>(), scores.shape[1], scores.shape[0], scores.shape[1],
                      q_pos0, ratio, topk_idx.data_as<int32_t>(), topk_idx.shape[1]);
}

absl::Status IndexerTopK(GemmHandle& handle, const IndexerTopKArgs& a) {
  const char* op = "cuda::IndexerTopK";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "q", a.q, {DType::kBF16}),
                         CheckDeviceView(op, "keys", a.keys, {DType::kBF16}),
                         CheckDeviceView(op, "weights", a.weights, {DType::kF32}),
                         CheckDeviceView(op, "topk_idx", a.topk_idx, {DType::kI32}),
                         CheckDeviceView(op, "workspace", a.workspace, {DType::kF32})}) {
    if (!s.ok()) return s;
  }
  if (absl::Status s = CheckArg(a.q.rank == 3 && a.keys.rank == 2 && a.keys.shape[1] == a.q.shape[2] &&
                                    a.topk_idx.rank == 2 && a.topk_idx.shape[0] == a.q.shape[0] &&
                                    a.ratio > 0 && a.q_chunk > 0,
                                op, "q [num_q, heads, D], keys [num_keys, D], topk_idx [num_q, k], "
                                    "ratio > 0, q_chunk > 0");
      !s.ok()) {
    return s;
  }
  const int64_t num_q = a.q.shape[0], heads = a.q.shape[1], head_dim = a.q.shape[2];
  const int64_t num_keys = a.keys.shape[0];
  if (absl::Status s = CheckViewShape(op, "weights", a.weights, {num_q, heads}); !s.ok()) return s;
  const int64_t chunk = std::min(a.q_chunk, std::max<int64_t>(num_q, 1));
  if (absl::Status s = CheckArg(a.workspace.numel() >= IndexerTopKWorkspaceFloats(chunk, heads, num_keys),
                                op, "workspace smaller than IndexerTopKWorkspaceFloats");
      !s.ok()) {
    return s;
  }
  if (num_q == 0) return absl::OkStatus();
  float* logits = a.workspace.data_as<float>();
  float* scores = logits + chunk * heads * num_keys;
  if (num_keys == 0) {  // nothing visible: every row is -1 padding
    return LaunchSelect(logits, 0, num_q, 0, a.q_pos0, a.ratio, a.topk_idx.data_as<int32_t>(),
                        a.topk_idx.shape[1]);
  }
  const core::TensorView q_rows = a.q.Reshape({num_q * heads, head_dim});
  for (int64_t c0 = 0; c0 < num_q; c0 += chunk) {
    const int64_t rows = std::min(chunk, num_q - c0);
    const core::TensorView logits_view = core::TensorView::Contiguous(
        logits, DType::kF32, {rows * heads, num_keys}, core::Device::kCuda);
    if (absl::Status s = Gemm(handle, q_rows.Slice(0, c0 * heads, (c0 + rows) * heads), a.keys,
                              logits_view);
        !s.ok()) {
      return s;
    }
    ReduceParams r{logits, a.weights.data_as<float>() + c0 * heads, scores, rows, heads, num_keys,
                   a.score_scale};
    const int64_t total = rows * num_keys;
    LaunchKernel(ReduceHeadsKernel,
                 static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 1 << 16)), 256, 0, r);
    if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
    if (absl::Status s = LaunchSelect(scores, num_keys, rows, num_keys, a.q_pos0 + c0, a.ratio,
                                      a.topk_idx.data_as<int32_t>() + c0 * a.topk_idx.shape[1],
                                      a.topk_idx.shape[1]);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
