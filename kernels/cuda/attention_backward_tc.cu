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
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kPStride = kTcKeys + 8;  // bf16 elements between rows of the [32][kTcKeys] dS|P
constexpr int kKeyGradColumns = 64;    // key-row gradient columns a warp holds at a time

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

// S = q_rows·keysᵀ and dP = do_rows·keysᵀ of the warp's 16 keys (TcWarpLogits' layout and
// summation order for each), in one pass over D: a key fragment feeds both products and the four
// accumulators are independent mma chains.
__device__ __forceinline__ void TcWarpLogitsPair(const uint16_t* q_rows, const uint16_t* do_rows,
                                                 const uint16_t* warp_keys, int64_t stride,
                                                 int64_t head_dim, float s[2][4], float dp[2][4]) {
  const int lane = threadIdx.x % 32;
  const int mrow = (lane % 8) + 8 * ((lane / 8) % 2), mcol = 8 * (lane / 16);
  const int krow = (lane % 8) + 8 * (lane / 16), kcol = 8 * ((lane / 8) % 2);
  const uint16_t* q_row = q_rows + mrow * stride + mcol;
  const uint16_t* do_row = do_rows + mrow * stride + mcol;
  const uint16_t* k_row = warp_keys + krow * stride + kcol;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
  }
#pragma unroll 2
  for (int64_t kk = 0; kk < head_dim; kk += 16) {
    uint32_t a[4], a_do[4], b[4];
    LdMatrixX4(b, k_row + kk);
    LdMatrixX4(a, q_row + kk);
    LdMatrixX4(a_do, do_row + kk);
    MmaBf16(s[0], a, b);
    MmaBf16(s[1], a, b + 2);
    MmaBf16(dp[0], a_do, b);
    MmaBf16(dp[1], a_do, b + 2);
  }
}

// dst[0 .. 4) += v (dst 16-byte aligned, global) and dst[0 .. 2) += v (8-byte aligned): relaxed
// gpu-scope vector reductions (sm_90), no value returned.
__device__ __forceinline__ void RedAddF32x4(float* dst, float4 v) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(v.x), "f"(v.y),
               "f"(v.z), "f"(v.w)
               : "memory");
}
__device__ __forceinline__ void RedAddF32x2(float* dst, float x, float y) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(x), "f"(y) : "memory");
}

// Starts copying the key rows rows[0 .. kTcKeys) (null: a zero row) into keys with cp.async, one
// commit group; the caller waits and synchronises. `fallback`: any global address (never read).
__device__ __forceinline__ void StartKeyGather(uint16_t* keys, int64_t stride,
                                               const uint16_t* const* rows, int64_t head_dim,
                                               const void* fallback) {
  const int vec_per_row = static_cast<int>(head_dim / 8);
  for (int e = threadIdx.x; e < kTcKeys * vec_per_row; e += kTcThreads) {
    const int k = e / vec_per_row, v = e % vec_per_row;
    const uint16_t* row = rows[k];
    CpAsync16(keys + k * stride + v * 8, row != nullptr ? row + v * 8 : fallback, row != nullptr);
  }
  CpAsyncCommit();
}

__device__ __forceinline__ uint16_t Bf16Bits(float v) {
  const __nv_bfloat16 b = __float2bfloat16(v);
  return *reinterpret_cast<const uint16_t*>(&b);
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

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t i = blockIdx.x;
  const int64_t h0 = int64_t{blockIdx.y} * kTcHeads;
  const int heads = static_cast<int>(Min64(kTcHeads, H - h0));
  TcLoadQueries(tile, p.q + (i * H + h0) * D, heads, D);
  TcLoadQueries(dout_tile, p.dout + (i * H + h0) * D, heads, D);
  CpAsyncWait<0>();
  __syncthreads();
  // Δ = dO·O per head (dO as staged in bf16, as dP uses it) and the saved lse.
  for (int r = warp; r < kTcHeads; r += kTcWarps) {
    float sum = 0.0f;
    if (r < heads) {
      for (int64_t c = lane; c < D; c += 32) {
        sum += LoadF(do_s, true, r * stride + c) * LoadF(p.out, p.out_bf16, (i * H + h0 + r) * D + c);
      }
    }
    sum = WarpSum(sum);
    if (lane == 0) {
      delta_s[r] = sum;
      lse_s[r] = r < heads ? p.lse[i * H + h0 + r] : 0.0f;
    }
  }

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
  if (num_tiles > 0) StartKeyGather(k_s, stride, rows, D, p.kv);
  CpAsyncWait<0>();
  __syncthreads();

  // ldmatrix row addresses of the key-row gradients' B, a row-major [k][n] operand read with
  // .trans (as attention_tile.cuh's V): k rows (lane % 8) + 8 ((lane / 8) % 2), n 8 (lane / 16) on.
  const int mrow = (lane % 8) + 8 * ((lane / 8) % 2), mcol = 8 * (lane / 16);
  // A of the key-row gradients from the [k][m] store (.trans): k rows (lane % 8) + 8 (lane / 16),
  // m columns 8 ((lane / 8) % 2) on from the warp's first key.
  const int at_k = (lane % 8) + 8 * (lane / 16), at_m = 16 * warp + 8 * ((lane / 8) % 2);
  const int64_t col0 = warp * (D / 4);
  const int ntiles = static_cast<int>(D / 32);
  float dq[kTcMaxTiles][4];
#pragma unroll
  for (int n = 0; n < kTcMaxTiles; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

  for (int n = 0; n < num_tiles; ++n) {
    const int buf = (n % 2) * kTcKeys;
    // P and scale·dS of the warp's 16 keys.
    {
      float s[2][4], dp[2][4];
      TcWarpLogitsPair(q_s, do_s, k_s + 16 * warp * stride, stride, D, s, dp);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = g + (e >= 2 ? 8 : 0), key = 16 * warp + 8 * j + 2 * t4 + (e & 1);
          float prob = 0.0f, ds = 0.0f;
          if (valid[buf + key] != 0 && r < heads) {
            prob = expf(p.scale * s[j][e] - lse_s[r]);
            ds = prob * (dp[j][e] - delta_s[r]);
          }
          ds_p[r * kPStride + key] = Bf16Bits(p.scale * ds);
          ds_p[(kTcHeads + r) * kPStride + key] = Bf16Bits(prob);
        }
      }
    }
    const bool more = n + 1 < num_tiles;
    if (more && threadIdx.x < kTcKeys) fill_tile_rows(n + 1);  // the other buffer
    __syncthreads();
    // dQ += (scale·dS) · K over the tile's keys, the warp's output columns.
    TcProbsTimesKeys(ds_p, kPStride, k_s, stride, D, dq);
    __syncthreads();  // every warp is done with the keys
    if (more) StartKeyGather(k_s, stride, rows + (buf ^ kTcKeys), D, p.kv);
    // Key-row gradients of the warp's 16 keys: [scale·dS; P]ᵀ (16 keys × 32) · [Q; dO] (32 × D),
    // while the next tile's keys arrive.
    {
      uint32_t a[2][4];
      LdMatrixX4Trans(a[0], ds_p + at_k * kPStride + at_m);
      LdMatrixX4Trans(a[1], ds_p + (kTcHeads + at_k) * kPStride + at_m);
      const uint16_t* b_rows[2] = {q_s + mrow * stride + mcol, do_s + mrow * stride + mcol};
      // Rows g and g + 8 of the fragments are the warp's keys g and g + 8. With float4 atomics
      // lane pairs (t4, t4 ^ 1) swap halves: the even lane adds key g's columns 4 (t4 / 2) .. + 3,
      // the odd lane key g + 8's.
      float* const dst_lo = grad_rows[buf + 16 * warp + g];
      float* const dst_hi = grad_rows[buf + 16 * warp + g + 8];
      const bool odd = (t4 & 1) != 0;
      float* const dst4 = odd ? dst_hi : dst_lo;
      for (int64_t c0 = 0; c0 < D; c0 += kKeyGradColumns) {
        float acc[kKeyGradColumns / 8][4];
#pragma unroll
        for (int m = 0; m < kKeyGradColumns / 8; ++m)
          acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
#pragma unroll
          for (int m = 0; m < kKeyGradColumns / 8; m += 2) {
            if (c0 + 8 * m < D) {
              uint32_t b[4];
              LdMatrixX4Trans(b, b_rows[ks] + c0 + 8 * m);
              MmaBf16(acc[m], a[ks], b);
              MmaBf16(acc[m + 1], a[ks], b + 2);
            }
          }
        }
        if (p.grads_vec4) {
#pragma unroll
          for (int m = 0; m < kKeyGradColumns / 8; ++m) {
            const float give0 = odd ? acc[m][0] : acc[m][2], give1 = odd ? acc[m][1] : acc[m][3];
            const float got0 = __shfl_xor_sync(0xffffffffu, give0, 1);
            const float got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
            const float4 v = odd ? make_float4(got0, got1, acc[m][2], acc[m][3])
                                 : make_float4(acc[m][0], acc[m][1], got0, got1);
            const int64_t col = c0 + 8 * m + 4 * (t4 / 2);
            if (dst4 != nullptr && c0 + 8 * m < D) {
              RedAddF32x4(dst4 + col, v);
            }
          }
        } else {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            float* const dst = half == 0 ? dst_lo : dst_hi;
            if (dst == nullptr) continue;
#pragma unroll
            for (int m = 0; m < kKeyGradColumns / 8; ++m) {
              const int64_t col = c0 + 8 * m + 2 * t4;
              if (col < D) {
                RedAddF32x2(dst + col, acc[m][2 * half], acc[m][2 * half + 1]);
              }
            }
          }
        }
      }
    }
    CpAsyncWait<0>();
    __syncthreads();  // the next tile's keys are in; dS|P and this tile's rows may be refilled
  }
  // dQ: rows g and g + 8 of the fragments are heads, columns the warp's.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r >= heads) continue;
    float* row = p.dq + (i * H + h0 + r) * D;
#pragma unroll
    for (int n = 0; n < kTcMaxTiles; ++n) {
      if (n < ntiles) {
        const int64_t col = col0 + 8 * n + 2 * t4;
        row[col] += dq[n][2 * half];
        row[col + 1] += dq[n][2 * half + 1];
      }
    }
  }
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
