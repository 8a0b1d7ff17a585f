#include "kernels/cuda/decode_attention.h"

#include <algorithm>
#include <type_traits>
#include <mutex>

#include "absl/status/statusor.h"

#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxLaneDims = 16;  // head_dim <= 512
constexpr int kWarps = 4;

__device__ __forceinline__ float Bf(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

struct AttnParams {
  const DecodeAttentionItem* items;
  const float* sink;
  int64_t heads, head_dim, window;
  float scale;
};

// Block (item, group of kWarps heads); warp w takes head blockIdx.y · kWarps + w; lane l holds
// dims l, l + 32, ...
__global__ void DecodeAttentionKernel(AttnParams p) {
  const DecodeAttentionItem it = p.items[blockIdx.x];
  const int lane = threadIdx.x % 32;
  const int64_t h = int64_t{blockIdx.y} * kWarps + threadIdx.x / 32;
  if (h >= p.heads) return;
  const int nj = static_cast<int>(p.head_dim / 32);
  const auto* q = static_cast<const __nv_bfloat16*>(it.q) + h * p.head_dim;
  float qr[kMaxLaneDims], acc[kMaxLaneDims];
#pragma unroll
  for (int j = 0; j < kMaxLaneDims; ++j) {
    qr[j] = j < nj ? Bf(q, lane + 32 * j) : 0.0f;
    acc[j] = 0.0f;
  }
  float mx = p.sink[h], denom = 1.0f;  // the value-less sink: exp(sink - mx) = 1
  auto visit = [&](const __nv_bfloat16* key) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxLaneDims; ++j) {
      if (j < nj) s += qr[j] * Bf(key, lane + 32 * j);
    }
    s = WarpSum(s) * p.scale;
    const float next = fmaxf(mx, s);
    const float correction = expf(mx - next), e = expf(s - next);
    denom = denom * correction + e;
#pragma unroll
    for (int j = 0; j < kMaxLaneDims; ++j) {
      if (j < nj) acc[j] = acc[j] * correction + e * Bf(key, lane + 32 * j);
    }
    mx = next;
  };
  const auto* ring = static_cast<const __nv_bfloat16*>(it.ring);
  const int64_t t = it.position;
  const int64_t cached = Min64(t, p.window - 1);
  for (int64_t pos = t - cached; pos < t; ++pos) visit(ring + (pos % p.window) * p.head_dim);
  visit(static_cast<const __nv_bfloat16*>(it.own_kv));
  if (it.comp != nullptr) {
    const auto* comp = static_cast<const __nv_bfloat16*>(it.comp);
    if (it.comp_idx != nullptr) {
      for (int64_t j = 0; j < it.comp_topk; ++j) {
        const int32_t w = it.comp_idx[j];
        if (w >= 0 && w < it.num_comp) visit(comp + w * p.head_dim);
      }
    } else {
      for (int64_t w = 0; w < it.num_comp; ++w) visit(comp + w * p.head_dim);
    }
  }
  auto* out = static_cast<__nv_bfloat16*>(it.out) + h * p.head_dim;
#pragma unroll
  for (int j = 0; j < kMaxLaneDims; ++j) {
    if (j < nj) out[lane + 32 * j] = __float2bfloat16(acc[j] / denom);
  }
}

struct IndexParams {
  const DecodeIndexerItem* items;
  int64_t heads, head_dim, ld;
  float score_scale;
};

// Block (item, slice of keys); one warp per key at a time; the item's queries in shared memory.
__global__ void DecodeIndexerKernel(IndexParams p) {
  extern __shared__ float q[];  // [heads, head_dim]
  const DecodeIndexerItem it = p.items[blockIdx.x];
  const auto* qb = static_cast<const __nv_bfloat16*>(it.q);
  for (int64_t i = threadIdx.x; i < p.heads * p.head_dim; i += blockDim.x) q[i] = Bf(qb, i);
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int nj = static_cast<int>(p.head_dim / 32);
  const auto* keys = static_cast<const __nv_bfloat16*>(it.keys);
  const int64_t warps = int64_t{gridDim.y} * kWarps;
  for (int64_t e = int64_t{blockIdx.y} * kWarps + warp; e < p.ld; e += warps) {
    if (e >= it.num_keys) {
      if (lane == 0) it.scores[e] = -INFINITY;
      continue;
    }
    float k[kMaxLaneDims];
#pragma unroll
    for (int j = 0; j < kMaxLaneDims; ++j) k[j] = j < nj ? Bf(keys, e * p.head_dim + lane + 32 * j) : 0.0f;
    float sum = 0.0f;
    for (int64_t h = 0; h < p.heads; ++h) {
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxLaneDims; ++j) {
        if (j < nj) dot += q[h * p.head_dim + lane + 32 * j] * k[j];
      }
      dot = WarpSum(dot);
      sum += fmaxf(dot, 0.0f) * p.score_scale * it.weights[h];
    }
    if (lane == 0) it.scores[e] = sum;
  }
}

// Uploads `bytes` of host items to a growing device buffer (one per call site).
template <typename T>
absl::StatusOr<T*> Stage(absl::Span<const T> items) {
  static std::mutex mu;
  static T* staged = nullptr;
  static size_t capacity = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (items.size() > capacity) {
    if (staged != nullptr) cudaFree(staged);
    capacity = std::max<size_t>(items.size(), 2 * capacity);
    if (cudaError_t e = cudaMalloc(&staged, capacity * sizeof(T)); e != cudaSuccess) {
      staged = nullptr;
      capacity = 0;
      return absl::InternalError(absl::StrFormat("decode staging: %s", cudaGetErrorString(e)));
    }
  }
  if (cudaError_t e =
          cudaMemcpy(staged, items.data(), items.size() * sizeof(T), cudaMemcpyHostToDevice);
      e != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("decode staging: %s", cudaGetErrorString(e)));
  }
  return staged;
}

}  // namespace

absl::Status DecodeAttention(absl::Span<const DecodeAttentionItem> items, const float* sink,
                             int64_t heads, int64_t head_dim, int64_t window, float scale) {
  if (head_dim % 32 != 0 || head_dim > 32 * kMaxLaneDims || heads < 1 || window < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::DecodeAttention: head_dim %d must be a multiple of 32 <= 512", head_dim));
  }
  if (items.empty()) return absl::OkStatus();
  auto staged = Stage<std::remove_cv_t<typename decltype(items)::value_type>>(items);
  if (!staged.ok()) return staged.status();
  for (size_t first = 0; first < items.size(); first += 65535) {
    const dim3 grid(static_cast<unsigned>(std::min<size_t>(65535, items.size() - first)),
                    static_cast<unsigned>((heads + kWarps - 1) / kWarps));
    DecodeAttentionKernel<<<grid, 32 * kWarps>>>(
        AttnParams{*staged + first, sink, heads, head_dim, window, scale});
  }
  return LaunchStatus("cuda::DecodeAttention");
}

absl::Status DecodeIndexerScores(absl::Span<const DecodeIndexerItem> items, int64_t heads,
                                 int64_t head_dim, int64_t ld, float score_scale) {
  if (head_dim % 32 != 0 || head_dim > 32 * kMaxLaneDims || heads < 1 ||
      heads * head_dim * 4 > 48 * 1024) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::DecodeIndexerScores: unsupported heads %d x head_dim %d", heads, head_dim));
  }
  if (items.empty() || ld == 0) return absl::OkStatus();
  auto staged = Stage<std::remove_cv_t<typename decltype(items)::value_type>>(items);
  if (!staged.ok()) return staged.status();
  const unsigned slices = static_cast<unsigned>(std::min<int64_t>((ld + 63) / 64, 1024));
  for (size_t first = 0; first < items.size(); first += 65535) {
    const dim3 grid(static_cast<unsigned>(std::min<size_t>(65535, items.size() - first)), slices);
    DecodeIndexerKernel<<<grid, 32 * kWarps, heads * head_dim * sizeof(float)>>>(
        IndexParams{*staged + first, heads, head_dim, ld, score_scale});
  }
  return LaunchStatus("cuda::DecodeIndexerScores");
}

}  // namespace v4rl::kernels::cuda
