#include <algorithm>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadsPerBlock = 8;  // one warp per head in the softmax step
constexpr int kKeysPerTile = 16;

struct AttentionParams {
  const void* q;
  const void* kv;
  const void* comp_kv;
  const int32_t* comp_idx;
  const float* sink;
  void* out;
  float* lse;
  int64_t num_q, num_heads, head_dim, num_kv, num_comp, comp_topk;
  int64_t q_pos0, kv_pos0, window, comp_ratio;
  float scale;
  int heads_per_block;
  bool q_bf16, kv_bf16, comp_bf16, out_bf16;
};

// Shared memory: q [hb][D], acc [hb][D], keys [kKeysPerTile][D] (f32), probabilities
// [hb][kKeysPerTile], per-head running max / sum / rescale factor.
size_t SharedBytes(int heads_per_block, int64_t head_dim) {
  return sizeof(float) * (2 * heads_per_block * head_dim + kKeysPerTile * head_dim +
                          heads_per_block * kKeysPerTile + 3 * kMaxHeadsPerBlock);
}

// grid (num_q, head groups). Key j of query i: j < num_window -> raw row first_row + j; else
// compressed slot j - num_window (comp_idx entry, or entry id itself when all are visible).
__global__ void __launch_bounds__(kThreads) SparseAttentionKernel(AttentionParams p) {
  extern __shared__ float smem[];
  const int hb = p.heads_per_block;
  const int64_t D = p.head_dim;
  float* q_s = smem;
  float* acc = q_s + hb * D;
  float* keys = acc + hb * D;
  float* prob = keys + kKeysPerTile * D;
  float* run_max = prob + hb * kKeysPerTile;
  float* run_sum = run_max + kMaxHeadsPerBlock;
  float* rescale = run_sum + kMaxHeadsPerBlock;
  __shared__ bool key_valid[kKeysPerTile];

  const int64_t i = blockIdx.x;
  const int64_t h0 = int64_t{blockIdx.y} * hb;
  const int heads = static_cast<int>(Min64(hb, p.num_heads - h0));
  const int64_t t = p.q_pos0 + i;
  const int64_t first = Max64(plan::WindowBegin(t, p.window), p.kv_pos0);
  const int64_t num_window = t - first + 1;
  int64_t num_comp_slots = 0;
  if (p.comp_kv != nullptr) {
    num_comp_slots = p.comp_idx != nullptr
                         ? p.comp_topk
                         : Min64(plan::NumVisibleCompressed(t, p.comp_ratio), p.num_comp);
  }
  const int64_t num_keys = num_window + num_comp_slots;

  for (int64_t e = threadIdx.x; e < heads * D; e += kThreads) {
    const int64_t h = e / D, d = e % D;
    q_s[h * D + d] = LoadF(p.q, p.q_bf16, ((i * p.num_heads) + h0 + h) * D + d);
    acc[h * D + d] = 0.0f;
  }
  if (threadIdx.x < heads) {
    run_max[threadIdx.x] = p.sink[h0 + threadIdx.x];  // the sink takes part in the max
    run_sum[threadIdx.x] = 0.0f;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int64_t tile = 0; tile < num_keys; tile += kKeysPerTile) {
    const int tile_keys = static_cast<int>(Min64(kKeysPerTile, num_keys - tile));
    __syncthreads();  // previous tile fully consumed
    // 1. Stage the tile's key rows (K = V) as f32.
    if (threadIdx.x < kKeysPerTile) {
      bool valid = threadIdx.x < tile_keys;
      const int64_t j = tile + threadIdx.x;
      if (valid && j >= num_window && p.comp_idx != nullptr) {
        const int32_t w = p.comp_idx[i * p.comp_topk + (j - num_window)];
        valid = w >= 0 && w < p.num_comp;
      }
      key_valid[threadIdx.x] = valid;
    }
    for (int64_t e = threadIdx.x; e < tile_keys * D; e += kThreads) {
      const int64_t k = e / D, d = e % D;
      const int64_t j = tile + k;
      float v = 0.0f;
      if (j < num_window) {
        v = LoadF(p.kv, p.kv_bf16, (first - p.kv_pos0 + j) * D + d);
      } else {
        int64_t w = j - num_window;
        if (p.comp_idx != nullptr) w = p.comp_idx[i * p.comp_topk + w];
        if (w >= 0 && w < p.num_comp) v = LoadF(p.comp_kv, p.comp_bf16, w * D + d);
      }
      keys[k * D + d] = v;
    }
    __syncthreads();
    // 2. Scores: one warp per (head, key) pair, lanes split the channels.
    for (int pair = warp; pair < heads * kKeysPerTile; pair += kWarps) {
      const int h = pair / kKeysPerTile, k = pair % kKeysPerTile;
      float dot = 0.0f;
      if (k < tile_keys && key_valid[k]) {
        for (int64_t d = lane; d < D; d += 32) dot += q_s[h * D + d] * keys[k * D + d];
        dot = WarpSum(dot);
      }
      if (lane == 0) {
        prob[h * kKeysPerTile + k] = (k < tile_keys && key_valid[k]) ? p.scale * dot : -INFINITY;
      }
    }
    __syncthreads();
    // 3. Online softmax per head (warp h): new max, rescale factor, tile probabilities and sum.
    if (warp < heads) {
      const int h = warp;
      const float s = lane < kKeysPerTile ? prob[h * kKeysPerTile + lane] : -INFINITY;
      const float old_max = run_max[h];
      const float new_max = fmaxf(old_max, WarpMax(s));
      const float e = lane < kKeysPerTile && s != -INFINITY ? expf(s - new_max) : 0.0f;
      const float tile_sum = WarpSum(e);
      if (lane < kKeysPerTile) prob[h * kKeysPerTile + lane] = e;
      if (lane == 0) {
        const float factor = expf(old_max - new_max);
        rescale[h] = factor;
        run_sum[h] = run_sum[h] * factor + tile_sum;
        run_max[h] = new_max;
      }
    }
    __syncthreads();
    // 4. acc = acc · rescale + Σ_k p_k · v_k.
    for (int64_t e = threadIdx.x; e < heads * D; e += kThreads) {
      const int64_t h = e / D, d = e % D;
      float a = acc[e] * rescale[h];
      for (int k = 0; k < tile_keys; ++k) a += prob[h * kKeysPerTile + k] * keys[k * D + d];
      acc[e] = a;
    }
  }
  __syncthreads();
  // The sink adds exp(sink - max) to the denominator only.
  for (int64_t e = threadIdx.x; e < heads * D; e += kThreads) {
    const int64_t h = e / D, d = e % D;
    const float denom = run_sum[h] + expf(p.sink[h0 + h] - run_max[h]);
    StoreF(p.out, p.out_bf16, ((i * p.num_heads) + h0 + h) * D + d, acc[e] / denom);
  }
  if (p.lse != nullptr && threadIdx.x < heads) {
    const int h = threadIdx.x;
    p.lse[i * p.num_heads + h0 + h] =
        run_max[h] + logf(run_sum[h] + expf(p.sink[h0 + h] - run_max[h]));
  }
}

// ---- Tensor-core path (bf16 inputs, head_dim % 32 == 0, head_dim <= 512) ----
//
// MQA makes each query's scores a small GEMM: Q [16 heads, D] · Kᵀ [D, keys] and P [16, keys] ·
// V [keys, D], so one block takes one query and up to 16 heads and runs both products on
// mma.sync m16n8k16 (bf16 in, fp32 accumulate). Keys come in tiles of kTcKeys rows gathered into
// shared memory (window rows, then compressed entries); four warps split the tile's keys for
// Q·Kᵀ and the head dimension for P·V. The online softmax keeps its running max (starting at the
// sink), sum and the fp32 output accumulators across tiles; P is rounded to bf16 for the second
// product, as flash attention does.
constexpr int kTcWarps = 4;
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcHeads = 16;
constexpr int kTcKeys = 64;
constexpr int kTcMaxTiles = 16;  // D / 32 output n-tiles per warp, D <= 512

__device__ __forceinline__ void MmaBf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t Pack(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

size_t TcSharedBytes(int64_t head_dim) {
  const int64_t stride = head_dim + 8;  // bf16 row stride, padded against bank conflicts
  return sizeof(uint16_t) * (kTcHeads * stride + kTcKeys * stride +
                             kTcHeads * (kTcKeys + 8)) +
         sizeof(float) * (kTcHeads * kTcKeys + 4 * kTcHeads) + sizeof(int) * kTcKeys;
}

__global__ void __launch_bounds__(kTcThreads) SparseAttentionTcKernel(AttentionParams p) {
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int64_t D = p.head_dim, stride = D + 8;
  uint16_t* q_s = reinterpret_cast<uint16_t*>(tc_smem);        // [16][stride]
  uint16_t* k_s = q_s + kTcHeads * stride;                       // [kTcKeys][stride]
  uint16_t* p_s = k_s + kTcKeys * stride;                        // [16][kTcKeys + 8]
  float* s_s = reinterpret_cast<float*>(p_s + kTcHeads * (kTcKeys + 8));  // [16][kTcKeys]
  float* run_max = s_s + kTcHeads * kTcKeys;
  float* run_sum = run_max + kTcHeads;
  float* rescale = run_sum + kTcHeads;
  int* valid = reinterpret_cast<int*>(rescale + 2 * kTcHeads);  // [kTcKeys]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;

  const int64_t i = blockIdx.x;
  const int64_t h0 = int64_t{blockIdx.y} * kTcHeads;
  const int heads = static_cast<int>(Min64(kTcHeads, p.num_heads - h0));
  const int64_t t = p.q_pos0 + i;
  const int64_t first = Max64(plan::WindowBegin(t, p.window), p.kv_pos0);
  const int64_t num_window = t - first + 1;
  int64_t num_comp_slots = 0;
  if (p.comp_kv != nullptr) {
    num_comp_slots = p.comp_idx != nullptr
                         ? p.comp_topk
                         : Min64(plan::NumVisibleCompressed(t, p.comp_ratio), p.num_comp);
  }
  const int64_t num_keys = num_window + num_comp_slots;
  const int64_t vec_per_row = D / 8;  // 16-byte vectors of 8 bf16

  // Q rows of this query's heads (zero rows past the last head).
  const uint4* q_rows = reinterpret_cast<const uint4*>(
      static_cast<const uint16_t*>(p.q) + (i * p.num_heads + h0) * D);
  for (int64_t e = threadIdx.x; e < kTcHeads * vec_per_row; e += kTcThreads) {
    const int64_t h = e / vec_per_row, v = e % vec_per_row;
    const uint4 value = h < heads ? q_rows[h * vec_per_row + v] : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(q_s + h * stride + v * 8) = value;
  }
  if (threadIdx.x < kTcHeads) {
    run_max[threadIdx.x] = threadIdx.x < heads ? p.sink[h0 + threadIdx.x] : 0.0f;
    run_sum[threadIdx.x] = 0.0f;
  }
  const int ntiles = static_cast<int>(D / 32);  // output n-tiles of 8 columns per warp
  float acc[kTcMaxTiles][4];
#pragma unroll
  for (int n = 0; n < kTcMaxTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

  for (int64_t tile = 0; tile < num_keys; tile += kTcKeys) {
    __syncthreads();  // the previous tile's keys and probabilities are consumed
    // 1. Gather the tile's key rows (zeros for missing keys) and their validity.
    if (threadIdx.x < kTcKeys) {
      const int64_t j = tile + threadIdx.x;
      int64_t row = -1;  // >= 0: raw row; <= -2: compressed entry -(row + 2)
      if (j < num_keys) {
        if (j < num_window) {
          row = first - p.kv_pos0 + j;
        } else {
          int64_t w = j - num_window;
          if (p.comp_idx != nullptr) w = p.comp_idx[i * p.comp_topk + w];
          if (w >= 0 && w < p.num_comp) row = -2 - w;
        }
      }
      valid[threadIdx.x] = row == -1 ? 0 : (row >= 0 ? int(row) + 1 : int(row));
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kTcKeys * vec_per_row; e += kTcThreads) {
      const int64_t k = e / vec_per_row, v = e % vec_per_row;
      const int code = valid[k];
      uint4 value = make_uint4(0, 0, 0, 0);
      if (code > 0) {
        value = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.kv) + int64_t(code - 1) * D)[v];
      } else if (code < 0) {
        value = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.comp_kv) + int64_t(-2 - code) * D)[v];
      }
      *reinterpret_cast<uint4*>(k_s + k * stride + v * 8) = value;
    }
    __syncthreads();
    // 2. S = scale · Q Kᵀ: warp w takes keys [16w, 16w + 16) as two n-tiles of 8.
    {
      float c[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
      for (int64_t kk = 0; kk < D; kk += 16) {
        uint32_t a[4];
        a[0] = *reinterpret_cast<const uint32_t*>(q_s + g * stride + kk + 2 * t4);
        a[1] = *reinterpret_cast<const uint32_t*>(q_s + (g + 8) * stride + kk + 2 * t4);
        a[2] = *reinterpret_cast<const uint32_t*>(q_s + g * stride + kk + 2 * t4 + 8);
        a[3] = *reinterpret_cast<const uint32_t*>(q_s + (g + 8) * stride + kk + 2 * t4 + 8);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const uint16_t* key = k_s + (16 * warp + 8 * j + g) * stride + kk + 2 * t4;
          const uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(key),
                                 *reinterpret_cast<const uint32_t*>(key + 8)};
          MmaBf16(c[j], a, b);
        }
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int col = 16 * warp + 8 * j + 2 * t4;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = g + (e >= 2 ? 8 : 0), key = col + (e & 1);
          const bool ok = valid[key] != 0;
          s_s[row * kTcKeys + key] = ok ? p.scale * c[j][e] : -INFINITY;
        }
      }
    }
    __syncthreads();
    // 3. Online softmax, warp w on rows 4w .. 4w + 3: new max, rescale, P in bf16, sums.
    for (int r = 4 * warp; r < 4 * warp + 4; ++r) {
      const float s0 = s_s[r * kTcKeys + lane], s1 = s_s[r * kTcKeys + lane + 32];
      const float old_max = run_max[r];
      const float new_max = fmaxf(old_max, WarpMax(fmaxf(s0, s1)));
      const float e0 = s0 == -INFINITY ? 0.0f : expf(s0 - new_max);
      const float e1 = s1 == -INFINITY ? 0.0f : expf(s1 - new_max);
      const float tile_sum = WarpSum(e0 + e1);
      const __nv_bfloat16 b0 = __float2bfloat16(e0), b1 = __float2bfloat16(e1);
      p_s[r * (kTcKeys + 8) + lane] = *reinterpret_cast<const uint16_t*>(&b0);
      p_s[r * (kTcKeys + 8) + lane + 32] = *reinterpret_cast<const uint16_t*>(&b1);
      if (lane == 0) {
        const float factor = expf(old_max - new_max);
        rescale[r] = factor;
        run_sum[r] = run_sum[r] * factor + tile_sum;
        run_max[r] = new_max;
      }
    }
    __syncthreads();
    // 4. O = O · rescale + P V: warp w owns output columns [w·D/4, (w+1)·D/4).
    const float f0 = rescale[g], f1 = rescale[g + 8];
#pragma unroll
    for (int n = 0; n < kTcMaxTiles; ++n) {
      if (n < ntiles) {
        acc[n][0] *= f0, acc[n][1] *= f0, acc[n][2] *= f1, acc[n][3] *= f1;
      }
    }
    for (int kk = 0; kk < kTcKeys; kk += 16) {
      uint32_t a[4];
      const int pstride = kTcKeys + 8;
      a[0] = *reinterpret_cast<const uint32_t*>(p_s + g * pstride + kk + 2 * t4);
      a[1] = *reinterpret_cast<const uint32_t*>(p_s + (g + 8) * pstride + kk + 2 * t4);
      a[2] = *reinterpret_cast<const uint32_t*>(p_s + g * pstride + kk + 2 * t4 + 8);
      a[3] = *reinterpret_cast<const uint32_t*>(p_s + (g + 8) * pstride + kk + 2 * t4 + 8);
      const uint16_t* v0 = k_s + (kk + 2 * t4) * stride;
#pragma unroll
      for (int n = 0; n < kTcMaxTiles; ++n) {
        if (n < ntiles) {
          const int64_t col = warp * (D / 4) + 8 * n + g;
          const uint32_t b[2] = {Pack(v0[col], v0[stride + col]),
                                 Pack(v0[8 * stride + col], v0[9 * stride + col])};
          MmaBf16(acc[n], a, b);
        }
      }
    }
  }
  __syncthreads();
  // Normalise (the sink adds exp(sink - max) to the denominator) and store.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r >= heads) continue;
    const float denom = run_sum[r] + expf(p.sink[h0 + r] - run_max[r]);
    const int64_t out_row = (i * p.num_heads + h0 + r) * D;
#pragma unroll
    for (int n = 0; n < kTcMaxTiles; ++n) {
      if (n < ntiles) {
        const int64_t col = warp * (D / 4) + 8 * n + 2 * t4;
        StoreF(p.out, p.out_bf16, out_row + col, acc[n][2 * half] / denom);
        StoreF(p.out, p.out_bf16, out_row + col + 1, acc[n][2 * half + 1] / denom);
      }
    }
  }
  if (p.lse != nullptr && threadIdx.x < heads) {
    const int r = threadIdx.x;
    p.lse[i * p.num_heads + h0 + r] = run_max[r] + logf(run_sum[r] + expf(p.sink[h0 + r] - run_max[r]));
  }
}

}  // namespace

absl::Status SparseAttention(const SparseAttentionArgs& a) {
  const char* op = "cuda::SparseAttention";
  using core::DType;
  for (const auto& [name, v] : {std::pair{"q", &a.q}, std::pair{"kv", &a.kv},
                                std::pair{"out", &a.out}}) {
    if (absl::Status s = CheckDeviceView(op, name, *v, {DType::kBF16, DType::kF32}); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckArg(a.q.rank == 3 && a.q.shape[2] <= 1024 && a.q.shape[2] > 0, op,
                                "q must be [num_q, num_heads, head_dim] with head_dim <= 1024");
      !s.ok()) {
    return s;
  }
  const int64_t num_q = a.q.shape[0], num_heads = a.q.shape[1], head_dim = a.q.shape[2];
  if (absl::Status s = CheckDeviceView(op, "sink", a.sink, {DType::kF32}); !s.ok()) return s;
  for (absl::Status s : {CheckViewShape(op, "sink", a.sink, {num_heads}),
                         CheckViewShape(op, "out", a.out, {num_q, num_heads, head_dim}),
                         CheckArg(a.kv.rank == 2 && a.kv.shape[1] == head_dim, op,
                                  "kv must be [num_kv, head_dim]"),
                         CheckArg(a.window > 0, op, "window must be positive"),
                         CheckArg(a.q_pos0 + num_q <= a.kv_pos0 + a.kv.shape[0] &&
                                      a.q_pos0 >= a.kv_pos0,
                                  op, "queries beyond the raw KV rows")}) {
    if (!s.ok()) return s;
  }
  AttentionParams p{};
  p.q = a.q.data;
  p.kv = a.kv.data;
  p.sink = a.sink.data_as<float>();
  p.out = a.out.data;
  p.num_q = num_q;
  p.num_heads = num_heads;
  p.head_dim = head_dim;
  p.num_kv = a.kv.shape[0];
  p.q_pos0 = a.q_pos0;
  p.kv_pos0 = a.kv_pos0;
  p.window = a.window;
  p.scale = a.scale;
  p.q_bf16 = IsBf16(a.q);
  p.kv_bf16 = IsBf16(a.kv);
  p.out_bf16 = IsBf16(a.out);
  if (a.comp_kv.data != nullptr) {
    if (absl::Status s = CheckDeviceView(op, "comp_kv", a.comp_kv, {DType::kBF16, DType::kF32});
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckArg(a.comp_kv.rank == 2 && a.comp_kv.shape[1] == head_dim, op,
                                  "comp_kv must be [num_comp, head_dim]");
        !s.ok()) {
      return s;
    }
    p.comp_kv = a.comp_kv.data;
    p.comp_bf16 = IsBf16(a.comp_kv);
    p.num_comp = a.comp_kv.shape[0];
    if (a.comp_idx.data != nullptr) {
      if (absl::Status s = CheckDeviceView(op, "comp_idx", a.comp_idx, {DType::kI32}); !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckArg(a.comp_idx.rank == 2 && a.comp_idx.shape[0] == num_q, op,
                                    "comp_idx must be [num_q, comp_topk]");
          !s.ok()) {
        return s;
      }
      p.comp_idx = a.comp_idx.data_as<int32_t>();
      p.comp_topk = a.comp_idx.shape[1];
    } else {
      if (absl::Status s = CheckArg(a.comp_ratio > 0, op, "comp_kv without comp_idx needs comp_ratio");
          !s.ok()) {
        return s;
      }
      p.comp_ratio = a.comp_ratio;
    }
  }
  if (a.lse.data != nullptr) {
    if (absl::Status s = CheckDeviceView(op, "lse", a.lse, {DType::kF32}); !s.ok()) return s;
    if (absl::Status s = CheckViewShape(op, "lse", a.lse, {num_q, num_heads}); !s.ok()) return s;
    p.lse = a.lse.data_as<float>();
  }
  if (num_q == 0 || num_heads == 0) return absl::OkStatus();
  // Tensor cores when every input is bf16 and head_dim suits the warp split (% 32, <= 512).
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool tensor_cores = p.q_bf16 && p.kv_bf16 && (p.comp_kv == nullptr || p.comp_bf16) &&
                            head_dim % 32 == 0 && head_dim <= 32 * kTcMaxTiles &&
                            aligned(p.q) && aligned(p.kv) &&
                            (p.comp_kv == nullptr || aligned(p.comp_kv));
  if (tensor_cores) {
    const size_t shared = TcSharedBytes(head_dim);
    if (cudaError_t e = cudaFuncSetAttribute(SparseAttentionTcKernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(shared));
        e != cudaSuccess) {
      return absl::InternalError(absl::StrFormat("%s: %d bytes of shared memory: %s", op, shared,
                                                 cudaGetErrorString(e)));
    }
    const dim3 grid(static_cast<unsigned>(num_q),
                    static_cast<unsigned>((num_heads + kTcHeads - 1) / kTcHeads));
    SparseAttentionTcKernel<<<grid, kTcThreads, shared>>>(p);
    return LaunchStatus(op);
  }
  p.heads_per_block = static_cast<int>(std::min<int64_t>(kMaxHeadsPerBlock, num_heads));
  const size_t shared = SharedBytes(p.heads_per_block, head_dim);
  if (shared > 48 * 1024) {
    if (cudaError_t e = cudaFuncSetAttribute(SparseAttentionKernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(shared));
        e != cudaSuccess) {
      return absl::InternalError(absl::StrFormat("%s: %d bytes of shared memory: %s", op, shared,
                                                 cudaGetErrorString(e)));
    }
  }
  const dim3 grid(static_cast<unsigned>(num_q),
                  static_cast<unsigned>((num_heads + p.heads_per_block - 1) / p.heads_per_block));
  SparseAttentionKernel<<<grid, kThreads, shared>>>(p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
