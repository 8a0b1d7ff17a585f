#include <algorithm>
#include <mutex>
#include <type_traits>

#include "absl/status/statusor.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/staging.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxLaneDims = 16;  // head_dim <= 512
constexpr int kAttnWarps = 16;    // DecodeAttentionKernel: query heads a block serves
constexpr int kTileKeys = 32;     // keys DecodeAttentionKernel stages in shared memory at a time

__device__ __forceinline__ float Bf(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

struct AttnParams {
  const DecodeAttentionItem* items;
  const float* sink;
  float* partial;  // splits > 1: [items, splits, heads, head_dim + 2] (acc, max, denom)
  int64_t heads, head_dim, window;
  int splits;
  float scale;
};

constexpr int kIlp = 4;  // keys in flight per warp

// Lane `lane`'s contiguous nj dims of a bf16 row as bf16 pairs (16-byte loads when nj % 8 == 0);
// kept packed to hold kIlp keys in few registers.
__device__ __forceinline__ void LoadLane(const __nv_bfloat16* row, int lane, int nj,
                                         __nv_bfloat162* v) {
  const __nv_bfloat16* p = row + lane * nj;
  if (nj % 8 == 0) {
#pragma unroll
    for (int c = 0; c < kMaxLaneDims / 8; ++c) {
      if (c * 8 < nj) {
        const uint4 raw = reinterpret_cast<const uint4*>(p)[c];
        const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) v[c * 4 + i] = b[i];
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) v[c * 4 + i] = __float2bfloat162_rn(0.0f);
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < kMaxLaneDims / 2; ++j) {
      v[j].x = 2 * j < nj ? p[2 * j] : __float2bfloat16(0.0f);
      v[j].y = 2 * j + 1 < nj ? p[2 * j + 1] : __float2bfloat16(0.0f);
    }
  }
}

// Block (item, group of kAttnWarps heads, key split); warp w takes head
// blockIdx.y · kAttnWarps + w; lane l holds dims [l · nj, (l + 1) · nj). The item's keys in order
// (window positions, its own row, the compressed entries) are cut into `splits` contiguous ranges;
// the block stages its range kTileKeys keys at a time in shared memory (the one K=V head serves
// every query head: each key leaves L2 once per block, not once per head) and each warp walks the
// tile kIlp keys at a time with an fp32 online softmax. One split: the max starts at the sink and
// the output is written; several: partial (acc, max, denom) for DecodeAttentionCombine.
__global__ void __launch_bounds__(32 * kAttnWarps) DecodeAttentionKernel(AttnParams p) {
  __shared__ __align__(16) __nv_bfloat16 tile[kTileKeys * 32 * kMaxLaneDims];
  __shared__ const __nv_bfloat16* tile_rows[kTileKeys];
  const DecodeAttentionItem it = p.items[blockIdx.x];
  const int lane = threadIdx.x % 32;
  const int64_t h = int64_t{blockIdx.y} * kAttnWarps + threadIdx.x / 32;
  const bool active = h < p.heads;  // idle warps still help stage the keys
  const int nj = static_cast<int>(p.head_dim / 32);
  float qr[kMaxLaneDims], acc[kMaxLaneDims];
  {
    __nv_bfloat162 raw[kMaxLaneDims / 2];
    LoadLane(static_cast<const __nv_bfloat16*>(it.q) + (active ? h : 0) * p.head_dim, lane, nj,
             raw);
#pragma unroll
    for (int j = 0; j < kMaxLaneDims / 2; ++j) {
      qr[2 * j] = __low2float(raw[j]);
      qr[2 * j + 1] = __high2float(raw[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxLaneDims; ++j) acc[j] = 0.0f;
  const bool single = p.splits == 1;
  float mx = single && active ? p.sink[h] : -INFINITY, denom = single ? 1.0f : 0.0f;
  const auto* ring = static_cast<const __nv_bfloat16*>(it.ring);
  const auto* comp = static_cast<const __nv_bfloat16*>(it.comp);
  const int64_t t = it.position;
  const int64_t cached = Min64(t, p.window - 1);
  const int64_t num_comp_keys = comp == nullptr ? 0 : (it.comp_idx != nullptr ? it.comp_topk : it.num_comp);
  const int64_t total = cached + 1 + num_comp_keys;
  const int64_t chunk = (total + p.splits - 1) / p.splits;
  const int64_t begin = Min64(total, int64_t{blockIdx.z} * chunk), end = Min64(total, begin + chunk);
  auto key_at = [&](int64_t v) -> const __nv_bfloat16* {
    if (v < cached) return ring + ((t - cached + v) % p.window) * p.head_dim;
    if (v == cached) return static_cast<const __nv_bfloat16*>(it.own_kv);
    const int64_t j = v - cached - 1;
    if (it.comp_idx == nullptr) return comp + j * p.head_dim;
    const int32_t w = it.comp_idx[j];
    return w >= 0 && w < it.num_comp ? comp + int64_t{w} * p.head_dim : nullptr;
  };
  const int64_t vec_per_row = p.head_dim / 8;
  for (int64_t base = begin; base < end; base += kTileKeys) {
    __syncthreads();  // the previous tile is consumed
    if (threadIdx.x < kTileKeys) {
      const int64_t v = base + threadIdx.x;
      tile_rows[threadIdx.x] = v < end ? key_at(v) : nullptr;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kTileKeys * vec_per_row; e += blockDim.x) {
      const int64_t r = e / vec_per_row, c = e % vec_per_row;
      const __nv_bfloat16* row = tile_rows[r];
      *reinterpret_cast<uint4*>(tile + r * p.head_dim + c * 8) =
          row != nullptr ? reinterpret_cast<const uint4*>(row)[c] : make_uint4(0, 0, 0, 0);
    }
    __syncthreads();
    if (!active) continue;
    for (int64_t v0 = base; v0 < Min64(end, base + kTileKeys); v0 += kIlp) {
      const __nv_bfloat16* keys[kIlp];
      __nv_bfloat162 kv[kIlp][kMaxLaneDims / 2];
      float sc[kIlp];
#pragma unroll
      for (int i = 0; i < kIlp; ++i) {
        const int64_t r = v0 + i - base;
        keys[i] = v0 + i < end && tile_rows[r] != nullptr ? tile + r * p.head_dim : nullptr;
        if (keys[i] != nullptr) {
          LoadLane(keys[i], lane, nj, kv[i]);
        } else {
#pragma unroll
          for (int j = 0; j < kMaxLaneDims / 2; ++j) kv[i][j] = __float2bfloat162_rn(0.0f);
        }
      }
#pragma unroll
      for (int i = 0; i < kIlp; ++i) {
        float d = 0.0f;
#pragma unroll
        for (int j = 0; j < kMaxLaneDims / 2; ++j) {
          d += qr[2 * j] * __low2float(kv[i][j]) + qr[2 * j + 1] * __high2float(kv[i][j]);
        }
        sc[i] = d;
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
#pragma unroll
        for (int i = 0; i < kIlp; ++i) sc[i] += __shfl_xor_sync(0xffffffffu, sc[i], offset);
      }
      float next = mx;
#pragma unroll
      for (int i = 0; i < kIlp; ++i) {
        sc[i] *= p.scale;
        if (keys[i] != nullptr) next = fmaxf(next, sc[i]);
      }
      if (next == -INFINITY) continue;  // no valid key yet (split without a sink)
      const float correction = expf(mx - next);
      float e[kIlp];
      denom *= correction;
#pragma unroll
      for (int i = 0; i < kIlp; ++i) {
        e[i] = keys[i] != nullptr ? expf(sc[i] - next) : 0.0f;
        denom += e[i];
      }
#pragma unroll
      for (int j = 0; j < kMaxLaneDims / 2; ++j) {
        float a0 = acc[2 * j] * correction, a1 = acc[2 * j + 1] * correction;
#pragma unroll
        for (int i = 0; i < kIlp; ++i) {
          a0 += e[i] * __low2float(kv[i][j]);
          a1 += e[i] * __high2float(kv[i][j]);
        }
        acc[2 * j] = a0;
        acc[2 * j + 1] = a1;
      }
      mx = next;
    }
  }
  if (!active) return;
  if (single) {
    auto* out = static_cast<__nv_bfloat16*>(it.out) + h * p.head_dim + lane * nj;
#pragma unroll
    for (int j = 0; j < kMaxLaneDims; ++j) {
      if (j < nj) out[j] = __float2bfloat16(acc[j] / denom);
    }
    return;
  }
  const int64_t stride = p.head_dim + 2;
  float* part = p.partial +
                ((int64_t{blockIdx.x} * p.splits + blockIdx.z) * p.heads + h) * stride;
#pragma unroll
  for (int j = 0; j < kMaxLaneDims; ++j) {
    if (j < nj) part[lane * nj + j] = acc[j];
  }
  if (lane == 0) {
    part[p.head_dim] = mx;
    part[p.head_dim + 1] = denom;
  }
}

// out[item, h] = (Σ_s acc_s · e^(m_s - M)) / (e^(sink - M) + Σ_s l_s · e^(m_s - M)), M the max
// of the sink and the splits' maxima. Block (item, head), threads over dims.
__global__ void DecodeAttentionCombine(AttnParams p) {
  const DecodeAttentionItem it = p.items[blockIdx.x];
  const int64_t h = blockIdx.y;
  const int64_t stride = p.head_dim + 2;
  const float* part = p.partial + int64_t{blockIdx.x} * p.splits * p.heads * stride + h * stride;
  const int64_t split_stride = p.heads * stride;
  float m = p.sink[h];
  for (int s = 0; s < p.splits; ++s) m = fmaxf(m, part[s * split_stride + p.head_dim]);
  float denom = expf(p.sink[h] - m);
  for (int s = 0; s < p.splits; ++s) {
    const float ms = part[s * split_stride + p.head_dim];
    if (ms != -INFINITY) denom += part[s * split_stride + p.head_dim + 1] * expf(ms - m);
  }
  auto* out = static_cast<__nv_bfloat16*>(it.out) + h * p.head_dim;
  for (int64_t d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
      const float ms = part[s * split_stride + p.head_dim];
      if (ms != -INFINITY) a += part[s * split_stride + d] * expf(ms - m);
    }
    out[d] = __float2bfloat16(a / denom);
  }
}

struct IndexParams {
  const DecodeIndexerItem* items;
  int64_t heads, head_dim, ld;
  float score_scale;
};

// Block (item, slice of kIndexKeys keys), one thread per key: the item's queries (f32) in shared
// memory, read as broadcasts (head weights from global); each thread streams its key row 8 dims
// at a time and keeps 16 heads' dot products in registers at a time (no shuffles).
constexpr int kIndexKeys = 128;

__global__ void __launch_bounds__(kIndexKeys) DecodeIndexerKernel(IndexParams p) {
  extern __shared__ __align__(16) float q[];  // [heads, head_dim]
  const DecodeIndexerItem it = p.items[blockIdx.x];
  const auto* qb = static_cast<const __nv_bfloat16*>(it.q);
  for (int64_t i = threadIdx.x; i < p.heads * p.head_dim; i += blockDim.x) q[i] = Bf(qb, i);
  __syncthreads();
  const int64_t e = int64_t{blockIdx.y} * kIndexKeys + threadIdx.x;
  if (e >= p.ld) return;
  if (e >= it.num_keys) {
    it.scores[e] = -INFINITY;
    return;
  }
  const auto* key = static_cast<const __nv_bfloat16*>(it.keys) + e * p.head_dim;
  float sum = 0.0f;
  for (int64_t h0 = 0; h0 < p.heads; h0 += 16) {  // 16 heads of dot products in registers
    float dot[16];
#pragma unroll
    for (int h = 0; h < 16; ++h) dot[h] = 0.0f;
    for (int64_t c = 0; c < p.head_dim; c += 8) {
      float k[8];
      Load8(key, /*bf16=*/true, c, k);
#pragma unroll
      for (int h = 0; h < 16; ++h) {
        if (h0 + h < p.heads) {
          const float4* qh = reinterpret_cast<const float4*>(q + (h0 + h) * p.head_dim + c);
          const float4 a = qh[0], b = qh[1];
          dot[h] += a.x * k[0] + a.y * k[1] + a.z * k[2] + a.w * k[3] + b.x * k[4] + b.y * k[5] +
                    b.z * k[6] + b.w * k[7];
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 16; ++h) {
      if (h0 + h < p.heads) sum += fmaxf(dot[h], 0.0f) * p.score_scale * it.weights[h0 + h];
    }
  }
  it.scores[e] = sum;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The items on the device for this call's launches (kernels/cuda/staging.h: no host sync).
template <typename T>
absl::StatusOr<const T*> Stage(absl::Span<const T> items) {
  auto staged = StageAsync(items.data(), items.size() * sizeof(T));
  if (!staged.ok()) return staged.status();
  return static_cast<const T*>(*staged);
}

}  // namespace

absl::Status DecodeAttention(absl::Span<const DecodeAttentionItem> items, const float* sink,
                             int64_t heads, int64_t head_dim, int64_t window, float scale) {
  if (head_dim % 32 != 0 || head_dim > 32 * kMaxLaneDims || heads < 1 || window < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::DecodeAttention: head_dim %d must be a multiple of 32 <= 512", head_dim));
  }
  if (items.empty()) return absl::OkStatus();
  // The kernel copies key rows in 16-byte pieces.
  for (size_t i = 0; i < items.size(); ++i) {
    const DecodeAttentionItem& it = items[i];
    if (!Aligned16(it.ring) || !Aligned16(it.own_kv) || !Aligned16(it.comp)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cuda::DecodeAttention: item %d's ring, own_kv and comp must be 16-byte aligned", i));
    }
  }
  // Key splits: enough blocks to fill the device twice, at least 8 keys per split.
  static const int sms = [] {
    int device = 0, count = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    return std::max(count, 1);
  }();
  int64_t max_keys = 1;
  for (const DecodeAttentionItem& it : items) {
    const int64_t comp = it.comp == nullptr ? 0 : (it.comp_idx != nullptr ? it.comp_topk : it.num_comp);
    max_keys = std::max(max_keys, std::min(it.position, window - 1) + 1 + comp);
  }
  const int64_t groups = (heads + kAttnWarps - 1) / kAttnWarps;
  const int64_t batch_blocks = std::min<int64_t>(static_cast<int64_t>(items.size()), 65535) * groups;
  const int splits = static_cast<int>(std::clamp<int64_t>(
      std::min((2 * sms + batch_blocks - 1) / batch_blocks, (max_keys + 7) / 8), 1, 256));
  float* partial = nullptr;
  if (splits > 1) {
    static std::mutex mu;
    static float* buffer = nullptr;
    static size_t capacity = 0;
    const size_t need = std::min<size_t>(items.size(), 65535) * splits * heads * (head_dim + 2);
    std::lock_guard<std::mutex> lock(mu);
    if (need > capacity) {
      if (buffer != nullptr) cudaFree(buffer);
      capacity = std::max(need, 2 * capacity);
      if (cudaError_t e = cudaMalloc(&buffer, capacity * sizeof(float)); e != cudaSuccess) {
        buffer = nullptr;
        capacity = 0;
        return absl::InternalError(absl::StrFormat("decode partials: %s", cudaGetErrorString(e)));
      }
    }
    partial = buffer;
  }
  auto staged = Stage<std::remove_cv_t<typename decltype(items)::value_type>>(items);
  if (!staged.ok()) return staged.status();
  for (size_t first = 0; first < items.size(); first += 65535) {
    const unsigned count = static_cast<unsigned>(std::min<size_t>(65535, items.size() - first));
    const AttnParams params{*staged + first, sink, partial, heads, head_dim, window, splits, scale};
    DecodeAttentionKernel<<<dim3(count, static_cast<unsigned>(groups), splits), 32 * kAttnWarps>>>(
        params);
    if (splits > 1) {
      DecodeAttentionCombine<<<dim3(count, static_cast<unsigned>(heads)), 128>>>(params);
    }
  }
  return LaunchStatus("cuda::DecodeAttention");
}

absl::Status DecodeIndexerScores(absl::Span<const DecodeIndexerItem> items, int64_t heads,
                                 int64_t head_dim, int64_t ld, float score_scale) {
  if (head_dim % 32 != 0 || head_dim > 32 * kMaxLaneDims || heads < 1 ||
      heads * head_dim * 4 > 48 * 1024 || (ld + kIndexKeys - 1) / kIndexKeys > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::DecodeIndexerScores: unsupported heads %d x head_dim %d (head_dim a multiple of "
        "32 <= 512, queries within 48 KiB) or ld %d over 65535 key slices",
        heads, head_dim, ld));
  }
  if (items.empty() || ld == 0) return absl::OkStatus();
  for (size_t i = 0; i < items.size(); ++i) {  // key rows are read 16 bytes at a time
    if (!Aligned16(items[i].keys)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("cuda::DecodeIndexerScores: item %d's keys must be 16-byte aligned", i));
    }
  }
  auto staged = Stage<std::remove_cv_t<typename decltype(items)::value_type>>(items);
  if (!staged.ok()) return staged.status();
  const unsigned slices = static_cast<unsigned>((ld + kIndexKeys - 1) / kIndexKeys);
  for (size_t first = 0; first < items.size(); first += 65535) {
    const dim3 grid(static_cast<unsigned>(std::min<size_t>(65535, items.size() - first)), slices);
    DecodeIndexerKernel<<<grid, kIndexKeys, heads * head_dim * sizeof(float)>>>(
        IndexParams{*staged + first, heads, head_dim, ld, score_scale});
  }
  return LaunchStatus("cuda::DecodeIndexerScores");
}

}  // namespace v4rl::kernels::cuda
