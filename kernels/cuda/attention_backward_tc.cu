// The tensor-core path of SparseAttentionBackward (attention_backward.h, tensor_cores = true):
// bf16 q, kv, comp_kv and dout; head_dim % 32 == 0 and <= 512. Block (query, 16 heads) walks the
// query's keys kTcKeys at a time (window rows, then compressed entries, as the forward's
// tensor-core kernel), starting at tile (query % tiles) and wrapping around, so that the blocks
// resident together (consecutive queries, which share most keys) add into different key rows at
// a time. Per tile:
//   S = Q·Kᵀ and dP = dO·Kᵀ in one pass over D (TcWarpLogitsPair: warp w on keys
//   [16w, 16w + 16), each key fragment loaded once for both),
//   P = exp(scale·S - lse), dS = P ∘ (dP - Δ) with Δ = dO·O per head, scale·dS and P rounded to
//   bf16 into shared memory (as flash attention's backward rounds them),
//   dQ += (scale·dS)·K in registers over the tiles (the forward's P·V, warp w on columns
//   [w·D/4, (w+1)·D/4)),
//   then the next tile's key rows start streaming into shared memory (cp.async) while the tile's
//   key-row gradients [scale·dS; P]ᵀ·[Q; dO] (keys × D with K = 32 heads' rows, warp w on its 16
//   keys, 64 columns at a time; they read no keys) are added to dkv / dcomp_kv with float4
//   atomics (float2 where a gradient tensor is not 16-byte aligned).
#include <cuda_bf16.h>

#include "kernels/cuda/attention_backward_tc.h"
#include "kernels/cuda/attention_backward_tile.cuh"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {
namespace {

struct TcParams {
  const uint16_t* q;
  const uint16_t* kv;
  const uint16_t* comp_kv;
  const int32_t* comp_idx;
  const float* sink;
  const void* out;
  const float* lse;
  const uint16_t* dout;
  float* dq;
  float* dkv;
  float* dcomp_kv;
  float* dsink;
  bool out_bf16;
  bool grads_vec4;  // dkv and dcomp_kv 16-byte aligned: float4 atomics
  int64_t num_heads, head_dim, num_comp, comp_topk, q_pos0, kv_pos0, window, comp_ratio;
  float scale;
};

// Shared memory: q and dO [16][D + 8] bf16, keys [kTcKeys][D + 8] bf16, scale·dS and P
// [2 · 16][kPStride] bf16, lse and Δ [16] f32, and two tiles' (the current and the next) key
// validity, source rows and gradient rows.
size_t TcBackwardSharedBytes(int64_t head_dim) {
  const int64_t stride = head_dim + 8;
  return sizeof(uint16_t) * ((2 * kTcHeads + kTcKeys) * stride + 2 * kTcHeads * kPStride) +
         sizeof(float) * 2 * kTcHeads +
         2 * (sizeof(int) + sizeof(const uint16_t*) + sizeof(float*)) * kTcKeys;
}

__global__ void __launch_bounds__(kTcThreads) SparseAttentionBackwardTcKernel(TcParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t D = p.head_dim, stride = D + 8, H = p.num_heads;
  uint16_t* q_s = reinterpret_cast<uint16_t*>(smem);
  uint16_t* do_s = q_s + kTcHeads * stride;
  uint16_t* k_s = do_s + kTcHeads * stride;
  uint16_t* ds_p = k_s + kTcKeys * stride;  // rows 0-15 scale·dS, 16-31 P; columns = keys
  float* lse_s = reinterpret_cast<float*>(ds_p + 2 * kTcHeads * kPStride);
  float* delta_s = lse_s + kTcHeads;
  // Two buffers (tile n uses n % 2) of the keys' validity, source rows and gradient rows.
  int* valid = reinterpret_cast<int*>(delta_s + kTcHeads);
  const uint16_t** rows = reinterpret_cast<const uint16_t**>(valid + 2 * kTcKeys);
  float** grad_rows = reinterpret_cast<float**>(reinterpret_cast<uintptr_t>(rows + 2 * kTcKeys));
  TcTile tile{};  // the fields TcLoadQueries uses
  tile.q = q_s, tile.stride = stride;
  TcTile dout_tile = tile;
  dout_tile.q = do_s;

  const int warp = threadIdx.x / 32;
  const int64_t i = blockIdx.x;
  const int64_t h0 = int64_t{blockIdx.y} * kTcHeads;
  const int heads = static_cast<int>(Min64(kTcHeads, H - h0));
  TcLoadQueries(tile, p.q + (i * H + h0) * D, heads, D);
  TcLoadQueries(dout_tile, p.dout + (i * H + h0) * D, heads, D);
  CpAsyncWait<0>();
  __syncthreads();
  TcDeltaAndLse(do_s, stride, p.out, p.out_bf16, (i * H + h0) * D, p.lse + i * H + h0, heads, D,
                delta_s, lse_s);

  const int64_t t = p.q_pos0 + i;
  const plan::QueryKeySlots slots =
      plan::KeySlots(t, p.window, p.kv_pos0, p.comp_kv != nullptr, p.comp_idx != nullptr,
                     p.comp_topk, p.comp_ratio, p.num_comp);
  const int64_t num_keys = slots.total();
  const int num_tiles = static_cast<int>((num_keys + kTcKeys - 1) / kTcKeys);
  const int first_tile = num_tiles > 0 ? static_cast<int>(i % num_tiles) : 0;
  const int32_t* picks = p.comp_idx != nullptr ? p.comp_idx + i * p.comp_topk : nullptr;
  // Threads < kTcKeys: the source and gradient rows of key threadIdx.x of the walk's n-th tile
  // into buffer n % 2.
  auto fill_tile_rows = [&](int n) {
    const int buf = (n % 2) * kTcKeys;
    const int64_t j = int64_t{(first_tile + n) % num_tiles} * kTcKeys + threadIdx.x;
    const uint16_t* row = nullptr;
    float* grad = nullptr;
    if (j < num_keys) {
      const plan::KeySlotSource src = plan::KeySlotAt(slots, j, p.kv_pos0, picks, p.num_comp);
      if (src.index >= 0) {
        row = (src.compressed ? p.comp_kv : p.kv) + src.index * D;
        grad = (src.compressed ? p.dcomp_kv : p.dkv) + src.index * D;
      }
    }
    rows[buf + threadIdx.x] = row;
    grad_rows[buf + threadIdx.x] = grad;
    valid[buf + threadIdx.x] = row != nullptr;
  };
  if (num_tiles > 0 && threadIdx.x < kTcKeys) fill_tile_rows(0);
  __syncthreads();  // lse_s, delta_s and tile 0's rows
  if (p.dsink != nullptr && threadIdx.x < heads) {
    const int r = threadIdx.x;
    atomicAdd(&p.dsink[h0 + r], -expf(p.sink[h0 + r] - lse_s[r]) * delta_s[r]);
  }
  if (num_tiles > 0) TcStartGather<kTcThreads>(k_s, stride, rows, D, p.kv);
  CpAsyncWait<0>();
  __syncthreads();

  float dq[kTcMaxTiles][4];
#pragma unroll
  for (int n = 0; n < kTcMaxTiles; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

  for (int n = 0; n < num_tiles; ++n) {
    const int buf = (n % 2) * kTcKeys;
    // P and scale·dS of the warp's 16 keys.
    {
      float s_tile[2][4], dp[2][4];
      TcWarpLogitsPair(q_s, do_s, k_s + 16 * warp * stride, stride, D, s_tile, dp);
      TcWriteProbsAndDs(s_tile, dp, valid + buf, heads, lse_s, delta_s, p.scale, ds_p);
    }
    const bool more = n + 1 < num_tiles;
    if (more && threadIdx.x < kTcKeys) fill_tile_rows(n + 1);  // the other buffer
    __syncthreads();
    // dQ += (scale·dS) · K over the tile's keys, the warp's output columns.
    TcProbsTimesKeys(ds_p, kPStride, k_s, stride, D, dq);
    __syncthreads();  // every warp is done with the keys
    if (more) TcStartGather<kTcThreads>(k_s, stride, rows + (buf ^ kTcKeys), D, p.kv);
    // Key-row gradients of the warp's 16 keys while the next tile's keys arrive.
    {
      const uint16_t* const ds_p_of[1] = {ds_p};
      const uint16_t* const q_of[1] = {q_s};
      const uint16_t* const do_of[1] = {do_s};
      const bool use[1] = {true};
      TcAddKeyRowGrads<1>(ds_p_of, q_of, do_of, use, stride, 16 * warp, 0, D, grad_rows + buf,
                          p.grads_vec4);
    }
    CpAsyncWait<0>();
    __syncthreads();  // the next tile's keys are in; dS|P and this tile's rows may be refilled
  }
  TcAddDq(dq, p.dq + (i * H + h0) * D, heads, D);
}

}  // namespace

absl::Status LaunchSparseAttentionBackwardTc(const SparseAttentionBackwardArgs& a) {
  const int64_t num_q = a.q.shape[0], heads = a.q.shape[1], D = a.q.shape[2];
  const bool has_comp = a.comp_kv.data != nullptr;
  const auto aligned16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  TcParams p{static_cast<const uint16_t*>(a.q.data),
             static_cast<const uint16_t*>(a.kv.data),
             has_comp ? static_cast<const uint16_t*>(a.comp_kv.data) : nullptr,
             static_cast<const int32_t*>(a.comp_idx.data),
             a.sink.data_as<float>(),
             a.out.data,
             a.lse.data_as<float>(),
             static_cast<const uint16_t*>(a.dout.data),
             a.dq.data_as<float>(),
             a.dkv.data_as<float>(),
             has_comp ? a.dcomp_kv.data_as<float>() : nullptr,
             a.dsink.data != nullptr ? a.dsink.data_as<float>() : nullptr,
             a.out.dtype == core::DType::kBF16,
             aligned16(a.dkv.data) && (!has_comp || aligned16(a.dcomp_kv.data)),
             heads,
             D,
             has_comp ? a.comp_kv.shape[0] : 0,
             a.comp_idx.data != nullptr ? a.comp_idx.shape[1] : 0,
             a.q_pos0,
             a.kv_pos0,
             a.window,
             a.comp_ratio,
             a.scale};
  const size_t shared = TcBackwardSharedBytes(D);
  if (cudaError_t e = cudaFuncSetAttribute(SparseAttentionBackwardTcKernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared));
      e != cudaSuccess) {
    return absl::InternalError(absl::StrFormat(
        "SparseAttentionBackward: %d bytes of shared memory: %s", shared, cudaGetErrorString(e)));
  }
  const dim3 grid(static_cast<unsigned>(num_q),
                  static_cast<unsigned>((heads + kTcHeads - 1) / kTcHeads));
  LaunchKernel(SparseAttentionBackwardTcKernel, grid, kTcThreads, shared, p);
  return LaunchStatus("SparseAttentionBackward (tensor cores)");
}

}  // namespace v4rl::kernels::cuda
