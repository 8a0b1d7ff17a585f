// The tensor-core pieces of the attention backward shared by the one-query kernel
// (attention_backward_tc.cu) and the query-pair kernel (attention_backward_pair_tc.cu): a group of
// four warps per query (attention_tile.cuh), each warp on 16 staged keys for
//   S = Q·Kᵀ and dP = dO·Kᵀ (TcWarpLogitsPair), P = exp(scale·S - lse), dS = P ∘ (dP - Δ),
// scale·dS and P rounded to bf16 into a [2 · 16][kPStride] shared tile (rows 0-15 scale·dS,
// 16-31 P; columns the tile's keys), from which dQ += (scale·dS)·K (TcProbsTimesKeys) and the
// key-row gradients [scale·dS; P]ᵀ·[Q; dO] (TcAddKeyRowGrads, fp32 vector atomics) follow.
// Include only from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/attention_backward.h"
#include "kernels/cuda/attention_quad_tc.h"
#include "kernels/cuda/attention_tile.cuh"

namespace v4rl::kernels::cuda {

constexpr int kPStride = kTcKeys + 8;  // bf16 elements between rows of the [32][kTcKeys] dS|P
constexpr int kKeyGradColumns = 64;    // key-row gradient columns a warp holds at a time

// The arguments of the backward kernels that walk a shared key list (the query-pair and
// four-query kernels), from SparseAttentionBackward's checked arguments (bf16 q, kv, comp_kv and
// dout: tensor_cores).
struct SharedKeysBackwardParams {
  SharedKeyParams keys;
  const uint16_t* q;
  const uint16_t* kv;
  const uint16_t* comp_kv;
  const float* sink;
  const void* out;
  const float* lse;
  const uint16_t* dout;
  float* dq;
  float* dkv;
  float* dcomp_kv;
  float* dsink;  // or null
  bool out_bf16;
  bool grads_vec4;  // dkv and dcomp_kv 16-byte aligned: float4 atomics
  int64_t num_heads, head_dim;
  float scale;
};

inline SharedKeysBackwardParams SharedKeysBackwardParamsOf(const SparseAttentionBackwardArgs& a) {
  const bool has_comp = a.comp_kv.data != nullptr;
  const auto aligned16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  SharedKeysBackwardParams p{};
  p.keys = {a.comp_idx.data_as<int32_t>(),
            a.q.shape[0],
            a.q_pos0,
            a.kv_pos0,
            a.window,
            a.comp_ratio,
            has_comp ? a.comp_kv.shape[0] : 0,
            a.comp_idx.data != nullptr ? a.comp_idx.shape[1] : 0,
            has_comp};
  p.q = static_cast<const uint16_t*>(a.q.data);
  p.kv = static_cast<const uint16_t*>(a.kv.data);
  p.comp_kv = has_comp ? static_cast<const uint16_t*>(a.comp_kv.data) : nullptr;
  p.sink = a.sink.data_as<float>();
  p.out = a.out.data;
  p.lse = a.lse.data_as<float>();
  p.dout = static_cast<const uint16_t*>(a.dout.data);
  p.dq = a.dq.data_as<float>();
  p.dkv = a.dkv.data_as<float>();
  p.dcomp_kv = has_comp ? a.dcomp_kv.data_as<float>() : nullptr;
  p.dsink = a.dsink.data != nullptr ? a.dsink.data_as<float>() : nullptr;
  p.out_bf16 = a.out.dtype == core::DType::kBF16;
  p.grads_vec4 = aligned16(a.dkv.data) && (!has_comp || aligned16(a.dcomp_kv.data));
  p.num_heads = a.q.shape[1];
  p.head_dim = a.q.shape[2];
  p.scale = a.scale;
  return p;
}

__device__ __forceinline__ uint16_t Bf16Bits(float v) {
  const __nv_bfloat16 b = __float2bfloat16(v);
  return *reinterpret_cast<const uint16_t*>(&b);
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

// Δ = dO·O per head (dO as staged in bf16 at do_rows, `stride` apart, as dP uses it; out the
// forward's [heads, D] rows from out_rows, bf16|f32) and the saved lse into delta[16], lse[16]
// (zeros past `heads`); the group's warp w on heads w, w + 4, ...
__device__ __forceinline__ void TcDeltaAndLse(const uint16_t* do_rows, int64_t stride,
                                              const void* out, bool out_bf16, int64_t out_row0,
                                              const float* lse_rows, int heads, int64_t head_dim,
                                              float* delta, float* lse) {
  const int lane = threadIdx.x % 32;
  for (int r = TcGroupWarp(); r < kTcHeads; r += kTcWarps) {
    float sum = 0.0f;
    if (r < heads) {
      for (int64_t c = lane; c < head_dim; c += 32) {
        sum += LoadF(do_rows, true, r * stride + c) *
               LoadF(out, out_bf16, out_row0 + r * head_dim + c);
      }
    }
    sum = WarpSum(sum);
    if (lane == 0) {
      delta[r] = sum;
      lse[r] = r < heads ? lse_rows[r] : 0.0f;
    }
  }
}

// P = weight · exp(scale·S - lse) and scale·dS = scale · P ∘ (dP - Δ) of the group warp's 16 keys
// [16w, 16w + 16) (s, dp from TcWarpLogitsPair) into ds_p, rounded to bf16: weights[key] is how
// many times the query takes the key (0: not at all; a pick count may exceed 1), rows past
// `heads` zero.
__device__ __forceinline__ void TcWriteProbsAndDs(const float (&s)[2][4], const float (&dp)[2][4],
                                                  const int* weights, int heads, const float* lse,
                                                  const float* delta, float scale, uint16_t* ds_p) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = g + (e >= 2 ? 8 : 0), key = 16 * TcGroupWarp() + 8 * j + 2 * t4 + (e & 1);
      const int weight = weights[key];
      float prob = 0.0f, ds = 0.0f;
      if (weight != 0 && r < heads) {
        prob = static_cast<float>(weight) * expf(scale * s[j][e] - lse[r]);
        ds = prob * (dp[j][e] - delta[r]);
      }
      ds_p[r * kPStride + key] = Bf16Bits(scale * ds);
      ds_p[(kTcHeads + r) * kPStride + key] = Bf16Bits(prob);
    }
  }
}

// dq_rows[r · D + c] += the group's dQ fragments (rows g and g + 8 heads, the group warp's
// columns [w·D/4, (w+1)·D/4), as TcProbsTimesKeys accumulates them) for heads r < `heads`.
__device__ __forceinline__ void TcAddDq(const float (&dq)[kTcMaxTiles][4], float* dq_rows,
                                        int heads, int64_t head_dim) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int64_t col0 = TcGroupWarp() * (head_dim / 4);
  const int ntiles = static_cast<int>(head_dim / 32);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r >= heads) continue;
    float* row = dq_rows + r * head_dim;
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

// The key-row gradients of the staged keys [key0, key0 + 16), columns [col_begin, col_end)
// (multiples of 16), summed over kGroups queries: Σ_g [scale·dS_g; P_g]ᵀ (16 keys × 32) ·
// [Q_g; dO_g] (32 × D), fp32 accumulation kKeyGradColumns columns at a time, then added to
// grad_rows[key0 .. key0 + 16) (null: no row) with float4 atomics when vec4 (rows 16-byte
// aligned), else float2. ds_p[g]: group g's dS|P tile; q_rows[g], do_rows[g]: its staged Q and
// dO rows (`stride` apart); groups with use[g] false are left out (their dS|P all zero). One warp.
template <int kGroups>
__device__ __forceinline__ void TcAddKeyRowGrads(const uint16_t* const (&ds_p)[kGroups],
                                                 const uint16_t* const (&q_rows)[kGroups],
                                                 const uint16_t* const (&do_rows)[kGroups],
                                                 const bool (&use)[kGroups], int64_t stride,
                                                 int key0, int64_t col_begin, int64_t col_end,
                                                 float* const* grad_rows, bool vec4) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;
  // ldmatrix row addresses of B, a row-major [k][n] operand read with .trans (as attention_tile's
  // V): k rows (lane % 8) + 8 ((lane / 8) % 2), n 8 (lane / 16) on. A from the [k][m] dS|P store
  // (.trans): k rows (lane % 8) + 8 (lane / 16), m columns 8 ((lane / 8) % 2) on from key0.
  const int mrow = (lane % 8) + 8 * ((lane / 8) % 2), mcol = 8 * (lane / 16);
  const int at_k = (lane % 8) + 8 * (lane / 16), at_m = key0 + 8 * ((lane / 8) % 2);
  uint32_t a[kGroups][2][4];
#pragma unroll
  for (int q = 0; q < kGroups; ++q) {
    LdMatrixX4Trans(a[q][0], ds_p[q] + at_k * kPStride + at_m);
    LdMatrixX4Trans(a[q][1], ds_p[q] + (kTcHeads + at_k) * kPStride + at_m);
  }
  // Rows g and g + 8 of the fragments are keys key0 + g and key0 + g + 8. With float4 atomics
  // lane pairs (t4, t4 ^ 1) swap halves: the even lane adds key g's columns 4 (t4 / 2) .. + 3,
  // the odd lane key g + 8's.
  float* const dst_lo = grad_rows[key0 + g];
  float* const dst_hi = grad_rows[key0 + g + 8];
  const bool odd = (t4 & 1) != 0;
  float* const dst4 = odd ? dst_hi : dst_lo;
  for (int64_t c0 = col_begin; c0 < col_end; c0 += kKeyGradColumns) {
    float acc[kKeyGradColumns / 8][4];
#pragma unroll
    for (int m = 0; m < kKeyGradColumns / 8; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
#pragma unroll
    for (int q = 0; q < kGroups; ++q) {
      if (!use[q]) continue;
      const uint16_t* b_rows[2] = {q_rows[q] + mrow * stride + mcol, do_rows[q] + mrow * stride + mcol};
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
#pragma unroll
        for (int m = 0; m < kKeyGradColumns / 8; m += 2) {
          if (c0 + 8 * m < col_end) {
            uint32_t b[4];
            LdMatrixX4Trans(b, b_rows[ks] + c0 + 8 * m);
            MmaBf16(acc[m], a[q][ks], b);
            MmaBf16(acc[m + 1], a[q][ks], b + 2);
          }
        }
      }
    }
    if (vec4) {
#pragma unroll
      for (int m = 0; m < kKeyGradColumns / 8; ++m) {
        const float give0 = odd ? acc[m][0] : acc[m][2], give1 = odd ? acc[m][1] : acc[m][3];
        const float got0 = __shfl_xor_sync(0xffffffffu, give0, 1);
        const float got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
        const float4 v = odd ? make_float4(got0, got1, acc[m][2], acc[m][3])
                             : make_float4(acc[m][0], acc[m][1], got0, got1);
        const int64_t col = c0 + 8 * m + 4 * (t4 / 2);
        if (dst4 != nullptr && c0 + 8 * m < col_end) RedAddF32x4(dst4 + col, v);
      }
    } else {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float* const dst = half == 0 ? dst_lo : dst_hi;
        if (dst == nullptr) continue;
#pragma unroll
        for (int m = 0; m < kKeyGradColumns / 8; ++m) {
          const int64_t col = c0 + 8 * m + 2 * t4;
          if (col < col_end) RedAddF32x2(dst + col, acc[m][2 * half], acc[m][2 * half + 1]);
        }
      }
    }
  }
}

}  // namespace v4rl::kernels::cuda
