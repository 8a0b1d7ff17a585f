#include <algorithm>

#include "absl/status/statusor.h"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/staging.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxHeadDim = 512;

struct AttnParams {
  const DecodeAttentionItem* items;
  const float* sink;
  float* partial;  // splits > 1: acc [items, splits, heads, head_dim]
  float* stats;    // splits > 1: (max, denom) [items, splits, heads, 2]
  int64_t heads, head_dim, window;
  int splits;
  float scale;
};

// Block (item, group of 16 heads, key split) on the tensor-core tile (attention_tile.cuh): the
// item's keys in order (window positions, its own row, the compressed entries) are cut into
// `splits` ranges of whole tiles; the block gathers its range kTcKeys rows at a time with cp.async
// (missing picks are zero rows marked invalid). One split: the running max starts at the sink and
// the output is written; several: partial (acc, max, denom) for DecodeAttentionCombine.
__global__ void __launch_bounds__(kTcThreads) DecodeAttentionKernel(AttnParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t D = p.head_dim;
  const TcTile tile_smem = TcCarve(smem, D);
  const DecodeAttentionItem it = p.items[blockIdx.x];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t h0 = int64_t{blockIdx.y} * kTcHeads;
  const int heads = static_cast<int>(Min64(kTcHeads, p.heads - h0));
  const bool single = p.splits == 1;
  const auto* q_rows = static_cast<const uint16_t*>(it.q) + h0 * D;
  TcLoadQueries(tile_smem, q_rows, heads, D);
  if (threadIdx.x < kTcHeads) {
    tile_smem.run_max[threadIdx.x] =
        single ? (threadIdx.x < heads ? p.sink[h0 + threadIdx.x] : 0.0f) : -INFINITY;
    tile_smem.run_sum[threadIdx.x] = 0.0f;
  }
  const auto* ring = static_cast<const uint16_t*>(it.ring);
  const auto* comp = static_cast<const uint16_t*>(it.comp);
  const int64_t t = it.position;
  const int64_t cached = Min64(t, p.window - 1);
  const int64_t num_comp_keys =
      comp == nullptr ? 0 : (it.comp_idx != nullptr ? it.comp_topk : it.num_comp);
  const int64_t total = cached + 1 + num_comp_keys;
  const int64_t tiles = (total + kTcKeys - 1) / kTcKeys;
  const int64_t chunk = (tiles + p.splits - 1) / p.splits * kTcKeys;
  const int64_t begin = Min64(total, int64_t{blockIdx.z} * chunk);
  const int64_t end = Min64(total, begin + chunk);
  // Ring slot of window key 0 (position t - cached); key v < cached sits v slots on, wrapping
  // once at most (cached < window): one 64-bit modulo a block instead of one a key.
  const int64_t first_slot = (t - cached) % p.window;
  float acc[kTcMaxTiles][4];
#pragma unroll
  for (int n = 0; n < kTcMaxTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  for (int64_t base = begin; base < end; base += kTcKeys) {
    if (threadIdx.x < kTcKeys) {
      const int64_t v = base + threadIdx.x;
      const uint16_t* row = nullptr;
      if (v < end) {
        if (v < cached) {
          const int64_t slot = first_slot + v;
          row = ring + (slot < p.window ? slot : slot - p.window) * D;
        } else if (v == cached) {
          row = static_cast<const uint16_t*>(it.own_kv);
        } else {
          const int64_t j = v - cached - 1;
          const int64_t w = it.comp_idx == nullptr ? j : it.comp_idx[j];
          if (w >= 0 && w < it.num_comp) row = comp + w * D;
        }
      }
      tile_smem.rows[threadIdx.x] = row;
    }
    TcGatherKeys(tile_smem, D, q_rows);
    TcAttendTile(tile_smem, D, p.scale, acc);  // ends synchronised
  }
  CpAsyncWait<0>();  // the query rows, when the range is empty
  __syncthreads();
  const int ntiles = static_cast<int>(D / 32);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r >= heads) continue;
    const int64_t h = h0 + r;
    const float mx = tile_smem.run_max[r], sum = tile_smem.run_sum[r];
    if (single) {
      const float denom = sum + expf(p.sink[h] - mx);
      auto* out = static_cast<__nv_bfloat16*>(it.out) + h * D;
#pragma unroll
      for (int n = 0; n < kTcMaxTiles; ++n) {
        if (n < ntiles) {
          const int64_t col = warp * (D / 4) + 8 * n + 2 * t4;
          out[col] = __float2bfloat16(acc[n][2 * half] / denom);
          out[col + 1] = __float2bfloat16(acc[n][2 * half + 1] / denom);
        }
      }
      continue;
    }
    const int64_t row = (int64_t{blockIdx.x} * p.splits + blockIdx.z) * p.heads + h;
    float* part = p.partial + row * D;
#pragma unroll
    for (int n = 0; n < kTcMaxTiles; ++n) {
      if (n < ntiles) {
        const int64_t col = warp * (D / 4) + 8 * n + 2 * t4;
        *reinterpret_cast<float2*>(part + col) =
            make_float2(acc[n][2 * half], acc[n][2 * half + 1]);
      }
    }
    if (warp == 0 && t4 == 0) *reinterpret_cast<float2*>(p.stats + 2 * row) = make_float2(mx, sum);
  }
}

// out[item, h] = (Σ_s acc_s · e^(m_s - M)) / (e^(sink - M) + Σ_s l_s · e^(m_s - M)), M the max
// of the sink and the splits' maxima. Block (item, head, slice of 4 · columns dims) of 256
// threads: the splits' factors e^(m_s - M) in shared memory (threads over splits, block
// reductions for M and the denominator), then thread (column c of 4 dims, lane s0 of `lanes`)
// adds the float4 acc of splits s0, s0 + lanes, .. in order, kCombineUnroll loads in flight, and
// the first lane of each column adds the lanes' sums in order. lanes = CombineLanes(splits) (the
// power of two >= splits, at most 16) and columns = 256 / lanes: a long context at batch 1 (~130
// splits) has 16 lanes, each thread waiting on one round of loads instead of a chain of them; a
// batch of 64 (4 splits) has 4 lanes and 256 dims a block. Fixed order for a given split count:
// runs repeat bit for bit.
constexpr int kMaxSplits = 1024;
constexpr int kCombineThreads = 256, kCombineMaxLanes = 16, kCombineUnroll = 8;

__host__ __device__ int CombineLanes(int splits) {
  int lanes = 1;
  while (lanes < splits && lanes < kCombineMaxLanes) lanes *= 2;
  return lanes;
}

__global__ void __launch_bounds__(kCombineThreads) DecodeAttentionCombine(AttnParams p) {
  WaitForPriorKernels();
  __shared__ float factor[kMaxSplits];
  __shared__ float scratch[32];
  __shared__ float4 lane_sums[kCombineThreads];  // [lanes][columns]
  const DecodeAttentionItem it = p.items[blockIdx.x];
  const int64_t h = blockIdx.y, D = p.head_dim;
  const int64_t first_row = int64_t{blockIdx.x} * p.splits * p.heads + h;  // split 0's row
  const float2* stats = reinterpret_cast<const float2*>(p.stats) + first_row;
  float m = p.sink[h];
  for (int s = threadIdx.x; s < p.splits; s += blockDim.x) m = fmaxf(m, stats[s * p.heads].x);
  m = BlockMax(m, scratch);
  float denom = 0.0f;
  for (int s = threadIdx.x; s < p.splits; s += blockDim.x) {
    const float2 ms = stats[s * p.heads];
    factor[s] = ms.x == -INFINITY ? 0.0f : expf(ms.x - m);
    denom += ms.y * factor[s];
  }
  denom = BlockSum(denom, scratch) + expf(p.sink[h] - m);  // BlockSum synchronises: factor ready
  const int lanes = CombineLanes(p.splits), columns = kCombineThreads / lanes;
  const int column = threadIdx.x % columns, lane = threadIdx.x / columns;
  const int64_t d = int64_t{blockIdx.z} * 4 * columns + 4 * column;
  float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (d < D) {
    const float* acc = p.partial + first_row * D + d;
    const int64_t split_stride = p.heads * D;
    for (int s0 = lane; s0 < p.splits; s0 += lanes * kCombineUnroll) {
      float4 v[kCombineUnroll];
#pragma unroll
      for (int u = 0; u < kCombineUnroll; ++u) {
        const int s = s0 + u * lanes;
        v[u] = s < p.splits ? *reinterpret_cast<const float4*>(acc + s * split_stride)
                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kCombineUnroll; ++u) {
        const int s = s0 + u * lanes;
        const float f = s < p.splits ? factor[s] : 0.0f;
        a.x += v[u].x * f, a.y += v[u].y * f, a.z += v[u].z * f, a.w += v[u].w * f;
      }
    }
  }
  lane_sums[lane * columns + column] = a;
  __syncthreads();
  if (lane != 0 || d >= D) return;
  float4 total = lane_sums[column];
  for (int l = 1; l < lanes; ++l) {
    const float4 v = lane_sums[l * columns + column];
    total.x += v.x, total.y += v.y, total.z += v.z, total.w += v.w;
  }
  __nv_bfloat16* out = static_cast<__nv_bfloat16*>(it.out) + h * D + d;  // out: 2-byte aligned
  out[0] = __float2bfloat16(total.x / denom);
  out[1] = __float2bfloat16(total.y / denom);
  out[2] = __float2bfloat16(total.z / denom);
  out[3] = __float2bfloat16(total.w / denom);
}

struct IndexParams {
  const DecodeIndexerItem* items;
  int64_t heads, head_dim, ld;
  float score_scale;
};

// Block (item, b) on tensor cores scores the item's tiles of kIndexKeys keys b, b + gridDim.y, ..:
// the queries [heads padded to 16, D] once and the tiles double-buffered in shared memory (cp.async
// of the next tile in flight while the current one is scored; zero rows past num_keys); per group
// of 16 heads, warp w computes the logits of keys [16w, 16w + 16) with mma.sync as
// attention_tile.cuh's Q·Kᵀ, adds ReLU(logit) · w[h] over its rows (heads g and g + 8), and a
// shuffle over the 8 lanes of a column sums the heads. Few items (single-stream decode at long
// context: 3,900 tiles at 1M tokens) take several tiles a block instead of a block a tile.
constexpr int kIndexKeys = 64;
constexpr int kIndexThreads = 128;

size_t IndexerSharedBytes(int64_t heads, int64_t head_dim) {
  const int64_t padded_heads = (heads + 15) / 16 * 16;
  return sizeof(uint16_t) * (padded_heads + 2 * kIndexKeys) * (head_dim + 8);
}

__global__ void __launch_bounds__(kIndexThreads) DecodeIndexerKernel(IndexParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char index_smem[];
  const DecodeIndexerItem it = p.items[blockIdx.x];
  const int64_t D = p.head_dim, stride = D + 8;
  const int padded_heads = static_cast<int>((p.heads + 15) / 16 * 16);
  uint16_t* q_s = reinterpret_cast<uint16_t*>(index_smem);  // [padded_heads][stride]
  uint16_t* k_s = q_s + padded_heads * stride;              // [2][kIndexKeys][stride]
  const int vec_per_row = static_cast<int>(D / 8);
  const auto* q = static_cast<const uint16_t*>(it.q);
  const auto* keys = static_cast<const uint16_t*>(it.keys);
  const int64_t tiles = (p.ld + kIndexKeys - 1) / kIndexKeys;
  auto load_tile = [&](int64_t tile, uint16_t* dst) {
    const int64_t key0 = tile * kIndexKeys;
    for (int e = threadIdx.x; e < kIndexKeys * vec_per_row; e += kIndexThreads) {
      const int r = e / vec_per_row, v = e % vec_per_row;
      const bool valid = key0 + r < it.num_keys;
      CpAsync16(dst + r * stride + v * 8, valid ? keys + (key0 + r) * D + v * 8 : q, valid);
    }
  };
  for (int e = threadIdx.x; e < padded_heads * vec_per_row; e += kIndexThreads) {
    const int h = e / vec_per_row, v = e % vec_per_row;
    const bool valid = h < p.heads;
    CpAsync16(q_s + h * stride + v * 8, valid ? q + h * D + v * 8 : q, valid);
  }
  if (blockIdx.y < tiles) load_tile(blockIdx.y, k_s);
  CpAsyncCommit();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;
  int buffer = 0;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y, buffer ^= 1) {
    const int64_t next = tile + gridDim.y;
    if (next < tiles) load_tile(next, k_s + (buffer ^ 1) * kIndexKeys * stride);
    CpAsyncCommit();
    CpAsyncWait<1>();  // this tile (and the queries) landed; the next may be in flight
    __syncthreads();
    const uint16_t* tile_s = k_s + buffer * kIndexKeys * stride;
    float part[2][2] = {{0, 0}, {0, 0}};  // [n-tile][column parity]: Σ_h ReLU(logit) · w[h]
    for (int h0 = 0; h0 < padded_heads; h0 += 16) {
      float c[2][4];
      TcWarpLogits(q_s + h0 * stride, tile_s + 16 * warp * stride, stride, D, c);
      const float w0 = h0 + g < p.heads ? it.weights[h0 + g] : 0.0f;
      const float w1 = h0 + g + 8 < p.heads ? it.weights[h0 + g + 8] : 0.0f;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        part[j][0] += fmaxf(c[j][0], 0.0f) * w0 + fmaxf(c[j][2], 0.0f) * w1;
        part[j][1] += fmaxf(c[j][1], 0.0f) * w0 + fmaxf(c[j][3], 0.0f) * w1;
      }
    }
    const int64_t key0 = tile * kIndexKeys;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float v = part[j][e];
        for (int offset = 4; offset < 32; offset *= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
        const int64_t key = key0 + 16 * warp + 8 * j + 2 * t4 + e;
        if (g == 0 && key < p.ld) it.scores[key] = key < it.num_keys ? v * p.score_scale : -INFINITY;
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this buffer
  }
  CpAsyncWait<0>();
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The current device's SM count, read once.
int MultiprocessorCount() {
  static const int sms = [] {
    int device = 0, count = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    return std::max(count, 1);
  }();
  return sms;
}

// The items on the device for this call's launches (kernels/cuda/staging.h: no host sync).
template <typename T>
absl::StatusOr<const T*> Stage(absl::Span<const T> items) {
  auto staged = StageAsync(items.data(), items.size() * sizeof(T));
  if (!staged.ok()) return staged.status();
  return static_cast<const T*>(*staged);
}

absl::Status CheckAttentionSizes(const char* op, int64_t heads, int64_t head_dim, int64_t window) {
  if (head_dim % 32 != 0 || head_dim > kMaxHeadDim || heads < 1 || window < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: head_dim %d must be a multiple of 32 <= 512, heads %d and window %d "
                        "positive",
                        op, head_dim, heads, window));
  }
  return absl::OkStatus();
}

absl::Status CheckIndexerSizes(const char* op, int64_t heads, int64_t head_dim, int64_t ld) {
  if (head_dim % 32 != 0 || head_dim > kMaxHeadDim || heads < 1 ||
      IndexerSharedBytes(heads, head_dim) > 48 * 1024 || ld < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: unsupported heads %d x head_dim %d (head_dim a multiple of 32 <= 512, queries and "
        "two tiles of keys within 48 KiB) or negative ld %d",
        op, heads, head_dim, ld));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeAttentionOnDevice(const DecodeAttentionItem* items, int64_t count,
                                     int64_t max_keys, const float* sink, int64_t heads,
                                     int64_t head_dim, int64_t window, float scale) {
  const char* op = "cuda::DecodeAttentionOnDevice";
  if (absl::Status s = CheckAttentionSizes(op, heads, head_dim, window); !s.ok()) return s;
  if (absl::Status s = CheckArg(count >= 0 && max_keys >= 1, op,
                                "count must be non-negative and max_keys positive");
      !s.ok()) {
    return s;
  }
  if (count == 0) return absl::OkStatus();
  // Key splits of whole tiles when the batch alone leaves SMs idle: two blocks fit on an SM at a
  // time (~90 KB of shared memory each), so splits = (2 · SMs) / blocks of the batch, rounded
  // down (a batch that fills one wave keeps one split and needs no combine).
  const int sms = MultiprocessorCount();
  const int64_t groups = (heads + kTcHeads - 1) / kTcHeads;
  const int64_t batch_blocks = std::min<int64_t>(count, 65535) * groups;
  const int splits = static_cast<int>(std::clamp<int64_t>(
      std::min((2 * sms) / batch_blocks, (max_keys + kTcKeys - 1) / kTcKeys), 1, kMaxSplits));
  // Split partials from the stream-ordered cache (free again once the launches are queued).
  core::Tensor partials;
  float *partial = nullptr, *stats = nullptr;
  if (splits > 1) {
    const int64_t rows = std::min<int64_t>(count, 65535) * splits * heads;
    partials =
        core::Tensor::Empty(core::DType::kF32, {rows * (head_dim + 2)}, CachingDeviceAllocator());
    partial = partials.data<float>();
    stats = partial + rows * head_dim;  // 16-byte aligned: head_dim % 32 == 0
  }
  const size_t shared = TcSharedBytes(head_dim);
  static const cudaError_t attribute =
      cudaFuncSetAttribute(DecodeAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(TcSharedBytes(kMaxHeadDim)));
  if (attribute != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("%s: %d bytes of shared memory: %s", op,
                                               TcSharedBytes(kMaxHeadDim),
                                               cudaGetErrorString(attribute)));
  }
  const int64_t combine_dims = 4 * (kCombineThreads / CombineLanes(splits));  // a block's slice
  const unsigned slices = static_cast<unsigned>((head_dim + combine_dims - 1) / combine_dims);
  for (int64_t first = 0; first < count; first += 65535) {
    const unsigned rows = static_cast<unsigned>(std::min<int64_t>(65535, count - first));
    const AttnParams params{items + first, sink,   partial, stats, heads,
                            head_dim,      window, splits,  scale};
    LaunchKernel(DecodeAttentionKernel, dim3(rows, static_cast<unsigned>(groups), splits),
                 kTcThreads, shared, params);
    if (splits > 1) {
      LaunchKernel(DecodeAttentionCombine, dim3(rows, static_cast<unsigned>(heads), slices),
                   kCombineThreads, 0, params);
    }
  }
  return LaunchStatus(op);
}

absl::Status DecodeAttention(absl::Span<const DecodeAttentionItem> items, const float* sink,
                             int64_t heads, int64_t head_dim, int64_t window, float scale) {
  const char* op = "cuda::DecodeAttention";
  if (absl::Status s = CheckAttentionSizes(op, heads, head_dim, window); !s.ok()) return s;
  if (items.empty()) return absl::OkStatus();
  // The kernel copies query and key rows in 16-byte pieces.
  int64_t max_keys = 1;
  for (size_t i = 0; i < items.size(); ++i) {
    const DecodeAttentionItem& it = items[i];
    if (!Aligned16(it.q) || !Aligned16(it.ring) || !Aligned16(it.own_kv) || !Aligned16(it.comp)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: item %d's q, ring, own_kv and comp must be 16-byte aligned", op, i));
    }
    const int64_t comp =
        it.comp == nullptr ? 0 : (it.comp_idx != nullptr ? it.comp_topk : it.num_comp);
    max_keys = std::max(max_keys, std::min(it.position, window - 1) + 1 + comp);
  }
  auto staged = Stage(items);
  if (!staged.ok()) return staged.status();
  return DecodeAttentionOnDevice(*staged, static_cast<int64_t>(items.size()), max_keys, sink, heads,
                                 head_dim, window, scale);
}

absl::Status DecodeIndexerScoresOnDevice(const DecodeIndexerItem* items, int64_t count,
                                         int64_t heads, int64_t head_dim, int64_t ld,
                                         float score_scale) {
  const char* op = "cuda::DecodeIndexerScoresOnDevice";
  if (absl::Status s = CheckIndexerSizes(op, heads, head_dim, ld); !s.ok()) return s;
  if (absl::Status s = CheckArg(count >= 0, op, "count must be non-negative"); !s.ok()) return s;
  if (count == 0 || ld == 0) return absl::OkStatus();
  // Blocks per item: every tile its own block while the batch fills the device (~8 blocks of
  // 128 threads per SM), else enough blocks for that, each looping over several tiles.
  const int sms = MultiprocessorCount();
  const int64_t tiles = (ld + kIndexKeys - 1) / kIndexKeys;
  const int64_t wanted = std::max<int64_t>(1, (8 * sms) / count);
  const unsigned slices = static_cast<unsigned>(std::min(tiles, wanted));
  const size_t shared = IndexerSharedBytes(heads, head_dim);
  for (int64_t first = 0; first < count; first += 65535) {
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(65535, count - first)), slices);
    LaunchKernel(DecodeIndexerKernel, grid, kIndexThreads, shared,
                 IndexParams{items + first, heads, head_dim, ld, score_scale});
  }
  return LaunchStatus(op);
}

absl::Status DecodeIndexerScores(absl::Span<const DecodeIndexerItem> items, int64_t heads,
                                 int64_t head_dim, int64_t ld, float score_scale) {
  const char* op = "cuda::DecodeIndexerScores";
  if (absl::Status s = CheckIndexerSizes(op, heads, head_dim, ld); !s.ok()) return s;
  if (items.empty() || ld == 0) return absl::OkStatus();
  for (size_t i = 0; i < items.size(); ++i) {  // rows are read 16 bytes at a time
    if (!Aligned16(items[i].q) || !Aligned16(items[i].keys)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: item %d's q and keys must be 16-byte aligned", op, i));
    }
  }
  auto staged = Stage(items);
  if (!staged.ok()) return staged.status();
  return DecodeIndexerScoresOnDevice(*staged, static_cast<int64_t>(items.size()), heads, head_dim,
                                     ld, score_scale);
}

}  // namespace v4rl::kernels::cuda
