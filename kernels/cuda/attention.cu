#include <algorithm>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_quad_tc.h"
#include "kernels/cuda/attention_tile.cuh"
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

// grid (num_q, head groups). Key slot j of query i: plan::KeySlotAt (window rows, then the
// compressed picks or every visible entry).
__global__ void __launch_bounds__(kThreads) SparseAttentionKernel(AttentionParams p) {
  WaitForPriorKernels();
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
  const plan::QueryKeySlots slots =
      plan::KeySlots(t, p.window, p.kv_pos0, p.comp_kv != nullptr, p.comp_idx != nullptr,
                     p.comp_topk, p.comp_ratio, p.num_comp);
  const int64_t num_keys = slots.total();

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

  const int32_t* picks = p.comp_idx != nullptr ? p.comp_idx + i * p.comp_topk : nullptr;
  for (int64_t tile = 0; tile < num_keys; tile += kKeysPerTile) {
    const int tile_keys = static_cast<int>(Min64(kKeysPerTile, num_keys - tile));
    __syncthreads();  // previous tile fully consumed
    // 1. Stage the tile's key rows (K = V) as f32.
    if (threadIdx.x < kKeysPerTile) {
      key_valid[threadIdx.x] =
          threadIdx.x < tile_keys &&
          plan::KeySlotAt(slots, tile + threadIdx.x, p.kv_pos0, picks, p.num_comp).index >= 0;
    }
    for (int64_t e = threadIdx.x; e < tile_keys * D; e += kThreads) {
      const int64_t k = e / D, d = e % D;
      const plan::KeySlotSource src = plan::KeySlotAt(slots, tile + k, p.kv_pos0, picks, p.num_comp);
      float v = 0.0f;
      if (!src.compressed) {
        v = LoadF(p.kv, p.kv_bf16, src.index * D + d);
      } else if (src.index >= 0) {
        v = LoadF(p.comp_kv, p.comp_bf16, src.index * D + d);
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
// V [keys, D], so one block takes one query and up to 16 heads; its keys (window rows, then
// compressed entries) come in tiles of kTcKeys rows gathered into shared memory (cp.async) and
// go through the shared tensor-core tile (attention_tile.cuh), the running max starting at the
// sink.
__global__ void __launch_bounds__(kTcThreads) SparseAttentionTcKernel(AttentionParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int64_t D = p.head_dim;
  const TcTile tile_smem = TcCarve(tc_smem, D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;

  const int64_t i = blockIdx.x;
  const int64_t h0 = int64_t{blockIdx.y} * kTcHeads;
  const int heads = static_cast<int>(Min64(kTcHeads, p.num_heads - h0));
  const int64_t t = p.q_pos0 + i;
  const plan::QueryKeySlots slots =
      plan::KeySlots(t, p.window, p.kv_pos0, p.comp_kv != nullptr, p.comp_idx != nullptr,
                     p.comp_topk, p.comp_ratio, p.num_comp);
  const int64_t num_keys = slots.total();

  // Q rows of this query's heads (zero rows past the last head).
  TcLoadQueries(tile_smem, static_cast<const uint16_t*>(p.q) + (i * p.num_heads + h0) * D, heads,
                D);
  if (threadIdx.x < kTcHeads) {
    tile_smem.run_max[threadIdx.x] = threadIdx.x < heads ? p.sink[h0 + threadIdx.x] : 0.0f;
    tile_smem.run_sum[threadIdx.x] = 0.0f;
  }
  float acc[kTcMaxTiles][4];
#pragma unroll
  for (int n = 0; n < kTcMaxTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

  for (int64_t tile = 0; tile < num_keys; tile += kTcKeys) {
    // 1. Gather the tile's key rows (zeros for missing keys) and their validity.
    if (threadIdx.x < kTcKeys) {
      const int64_t j = tile + threadIdx.x;
      const uint16_t* row = nullptr;
      if (j < num_keys) {
        const int32_t* picks = p.comp_idx != nullptr ? p.comp_idx + i * p.comp_topk : nullptr;
        const plan::KeySlotSource src = plan::KeySlotAt(slots, j, p.kv_pos0, picks, p.num_comp);
        if (src.index >= 0) {
          row = static_cast<const uint16_t*>(src.compressed ? p.comp_kv : p.kv) + src.index * D;
        }
      }
      tile_smem.rows[threadIdx.x] = row;
    }
    TcGatherKeys(tile_smem, D, p.kv);
    // 2-4. Scores, online softmax, P·V (ends synchronised: rows and keys may be refilled).
    TcAttendTile(tile_smem, D, p.scale, acc);
  }
  // Normalise (the sink adds exp(sink - max) to the denominator) and store.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r >= heads) continue;
    const float denom = tile_smem.run_sum[r] + expf(p.sink[h0 + r] - tile_smem.run_max[r]);
    const int64_t out_row = (i * p.num_heads + h0 + r) * D;
#pragma unroll
    for (int n = 0; n < kTcMaxTiles; ++n) {
      if (n < static_cast<int>(D / 32)) {
        const int64_t col = warp * (D / 4) + 8 * n + 2 * t4;
        StoreF(p.out, p.out_bf16, out_row + col, acc[n][2 * half] / denom);
        StoreF(p.out, p.out_bf16, out_row + col + 1, acc[n][2 * half + 1] / denom);
      }
    }
  }
  if (p.lse != nullptr && threadIdx.x < heads) {
    const int r = threadIdx.x;
    p.lse[i * p.num_heads + h0 + r] =
        tile_smem.run_max[r] +
        logf(tile_smem.run_sum[r] + expf(p.sink[h0 + r] - tile_smem.run_max[r]));
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
  // The four-query kernel stores two outputs at a time (float2 / bf16x2): a 16-byte aligned out.
  if (tensor_cores && head_dim == kQuadHeadDim && aligned(p.out) &&
      SharedKeyListApplies(p.comp_kv != nullptr, p.comp_idx != nullptr, p.num_comp, p.comp_topk)) {
    const SharedKeyParams keys{p.comp_idx,   num_q,      p.q_pos0,    p.kv_pos0,           p.window,
                               p.comp_ratio, p.num_comp, p.comp_topk, p.comp_kv != nullptr};
    const QuadAttentionParams quad{keys,
                                   static_cast<const uint16_t*>(p.q),
                                   static_cast<const uint16_t*>(p.kv),
                                   static_cast<const uint16_t*>(p.comp_kv),
                                   p.sink,
                                   p.out,
                                   p.lse,
                                   num_heads,
                                   p.scale,
                                   p.out_bf16};
    return LaunchSparseAttentionQuadTc(quad);
  }
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
    LaunchKernel(SparseAttentionTcKernel, grid, kTcThreads, shared, p);
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
  LaunchKernel(SparseAttentionKernel, grid, kThreads, shared, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
