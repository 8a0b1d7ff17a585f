// The tensor-core attention tile shared by the prefill kernel (attention.cu: one query per block)
// and the batched decode kernel (decode_attention.cu: one sequence's query per block): 16 query
// heads against kTcKeys bf16 key rows staged in shared memory (one K=V head), mma.sync m16n8k16
// with bf16 inputs and fp32 accumulation, an fp32 online softmax whose running max may start at
// the sink or at -inf, P rounded to bf16 for the second product (as flash attention does).
// Four warps: warp w takes keys [16w, 16w + 16) for Q·Kᵀ and output columns [w·D/4, (w+1)·D/4)
// for P·V. D (head_dim) % 32 == 0 and D <= 512. A block may hold several such groups of four
// warps (the query-pair backward, attention_pair.cuh: tiles of their own, shared key rows); the
// helpers use the warp's and thread's index within its group, and their barriers are the
// block's, so the groups call them in step. TcWarpLogits (a warp's 16 keys against 16 query
// rows) also serves the decode indexer's scores. Include only from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {

constexpr int kTcWarps = 4;
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcHeads = 16;
constexpr int kTcKeys = 64;
constexpr int kTcMaxTiles = 16;  // D / 32 output n-tiles of 8 columns per warp, D <= 512

// Shared memory of one block: q [16][D + 8] and keys [kTcKeys][D + 8] bf16 (rows padded against
// bank conflicts, 16-byte aligned), probabilities [16][kTcKeys + 8] bf16, scores [16][kTcKeys]
// f32, per-head running max / sum / rescale factor, the keys' validity and source rows [kTcKeys].
struct TcTile {
  uint16_t* q;
  uint16_t* keys;
  uint16_t* probs;
  float* scores;
  float* run_max;
  float* run_sum;
  float* rescale;
  int* valid;              // non-zero: a real key; zero: padding (score -inf)
  const uint16_t** rows;   // the tile's key rows in global memory (null: padding), for TcGatherKeys
  int64_t stride;          // bf16 elements between rows of q and keys
};

inline size_t TcSharedBytes(int64_t head_dim) {
  const int64_t stride = head_dim + 8;
  return sizeof(uint16_t) * (kTcHeads * stride + kTcKeys * stride + kTcHeads * (kTcKeys + 8)) +
         sizeof(float) * (kTcHeads * kTcKeys + 4 * kTcHeads) + sizeof(int) * kTcKeys +
         sizeof(const uint16_t*) * kTcKeys;
}

// This thread's warp and thread index within its group of four warps.
__device__ __forceinline__ int TcGroupWarp() { return static_cast<int>(threadIdx.x / 32) % kTcWarps; }
__device__ __forceinline__ int TcGroupThread() { return static_cast<int>(threadIdx.x) % kTcThreads; }

__device__ __forceinline__ TcTile TcCarve(unsigned char* smem, int64_t head_dim) {
  TcTile t;
  t.stride = head_dim + 8;
  t.q = reinterpret_cast<uint16_t*>(smem);
  t.keys = t.q + kTcHeads * t.stride;
  t.probs = t.keys + kTcKeys * t.stride;
  t.scores = reinterpret_cast<float*>(t.probs + kTcHeads * (kTcKeys + 8));
  t.run_max = t.scores + kTcHeads * kTcKeys;
  t.run_sum = t.run_max + kTcHeads;
  t.rescale = t.run_sum + kTcHeads;
  t.valid = reinterpret_cast<int*>(t.rescale + 2 * kTcHeads);
  t.rows = reinterpret_cast<const uint16_t**>(t.valid + kTcKeys);  // 8-byte aligned offset
  return t;
}

// Starts copying the `heads` (<= 16) query rows at q_rows (head_dim apart, 16-byte aligned) into
// t.q with cp.async, zeros past the last head; the next TcGatherKeys (or CpAsyncWait) completes it.
__device__ __forceinline__ void TcLoadQueries(const TcTile& t, const uint16_t* q_rows, int heads,
                                              int64_t head_dim) {
  const int vec_per_row = static_cast<int>(head_dim / 8);
  for (int e = TcGroupThread(); e < kTcHeads * vec_per_row; e += kTcThreads) {
    const int h = e / vec_per_row, v = e % vec_per_row;
    CpAsync16(t.q + h * t.stride + v * 8, h < heads ? q_rows + h * head_dim + v * 8 : q_rows,
              h < heads);
  }
  CpAsyncCommit();
}

// Copies the rows t.rows[0 .. kTcKeys) (filled by threads < kTcKeys before the call; null: a zero
// row marked invalid) into t.keys with cp.async and sets t.valid. `fallback`: any global address
// (never read). Starts and ends with a barrier. When a row's 16-byte pieces divide the block
// (D = 128, 256, 512: 16, 32, 64 of them), each thread keeps one piece column and steps over rows,
// with no division per copy: the decode kernels issue instructions, not bytes, at their limit
// (Nsight Compute at batch 256: ~2 warps a scheduler, one issue every 3.5 cycles).
__device__ __forceinline__ void TcGatherKeys(const TcTile& t, int64_t head_dim,
                                             const void* fallback) {
  __syncthreads();
  if (threadIdx.x < kTcKeys) t.valid[threadIdx.x] = t.rows[threadIdx.x] != nullptr;
  const int vec_per_row = static_cast<int>(head_dim / 8);
  if (kTcThreads % vec_per_row == 0) {
    const int v = static_cast<int>(threadIdx.x) % vec_per_row;
    const int rows_per_round = kTcThreads / vec_per_row;
    uint16_t* dst = t.keys + v * 8;
    const int64_t dst_step = rows_per_round * t.stride;
    dst += (static_cast<int>(threadIdx.x) / vec_per_row) * t.stride;
#pragma unroll 4
    for (int k = static_cast<int>(threadIdx.x) / vec_per_row; k < kTcKeys;
         k += rows_per_round, dst += dst_step) {
      const uint16_t* row = t.rows[k];
      CpAsync16(dst, row != nullptr ? row + v * 8 : fallback, row != nullptr);
    }
  } else {
    for (int e = threadIdx.x; e < kTcKeys * vec_per_row; e += kTcThreads) {
      const int k = e / vec_per_row, v = e % vec_per_row;
      const uint16_t* row = t.rows[k];
      CpAsync16(t.keys + k * t.stride + v * 8, row != nullptr ? row + v * 8 : fallback,
                row != nullptr);
    }
  }
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
}

// Starts copying the key rows rows[0 .. kTcKeys) (null: a zero row) into keys (`stride` apart)
// with cp.async, one commit group, spread over the block's kThreads threads; the caller waits
// and synchronises. `fallback`: any global address (never read).
template <int kThreads>
__device__ __forceinline__ void TcStartGather(uint16_t* keys, int64_t stride,
                                              const uint16_t* const* rows, int64_t head_dim,
                                              const void* fallback) {
  const int vec_per_row = static_cast<int>(head_dim / 8);
  for (int e = threadIdx.x; e < kTcKeys * vec_per_row; e += kThreads) {
    const int k = e / vec_per_row, v = e % vec_per_row;
    const uint16_t* row = rows[k];
    CpAsync16(keys + k * stride + v * 8, row != nullptr ? row + v * 8 : fallback, row != nullptr);
  }
  CpAsyncCommit();
}

__device__ __forceinline__ void MmaBf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Four 8x8 b16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8
// (16-byte aligned). Without .trans lane l receives (row l / 4, columns 2(l % 4), +1) of each;
// with .trans the transposed matrix's.
__device__ __forceinline__ void LdMatrixX4(uint32_t r[4], const uint16_t* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t r[4], const uint16_t* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Logits of 16 query rows against the 16 keys of this warp: c[j] = n-tile j (keys 8j .. 8j + 7)
// of q_rows [16, D] · keysᵀ in the mma C layout (rows l / 4 and l / 4 + 8, columns 2(l % 4), +1).
// q_rows and warp_keys: bf16 rows `stride` apart in shared memory, 16-byte aligned.
__device__ __forceinline__ void TcWarpLogits(const uint16_t* q_rows, const uint16_t* warp_keys,
                                             int64_t stride, int64_t head_dim, float c[2][4]) {
  const int lane = threadIdx.x % 32;
  // A: matrices 0/1 rows 0-7 / 8-15, matrices 2/3 eight columns on. B (col-major = key rows):
  // (keys 0-7, 8 dims), (keys 0-7, next 8 dims), (keys 8-15, 8 dims), (keys 8-15, next 8 dims)
  // give b of both n-tiles.
  const int mrow = (lane % 8) + 8 * ((lane / 8) % 2), mcol = 8 * (lane / 16);
  const int krow = (lane % 8) + 8 * (lane / 16), kcol = 8 * ((lane / 8) % 2);
  const uint16_t* q_row = q_rows + mrow * stride + mcol;
  const uint16_t* k_row = warp_keys + krow * stride + kcol;
#pragma unroll
  for (int j = 0; j < 2; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
  for (int64_t kk = 0; kk < head_dim; kk += 16) {
    uint32_t a[4], b[4];
    LdMatrixX4(a, q_row + kk);
    LdMatrixX4(b, k_row + kk);
    MmaBf16(c[0], a, b);
    MmaBf16(c[1], a, b + 2);
  }
}

// acc += P · V for this warp's output columns [w·D/4, (w+1)·D/4): P [16][kTcKeys] bf16 in shared
// memory (rows `pstride` apart), V the kTcKeys staged key rows (`stride` apart). acc: this
// thread's fragments of the [16, D] f32 product (rows g and g + 8 of n-tile n, columns 2(l % 4),
// +1). The caller synchronises around it.
__device__ __forceinline__ void TcProbsTimesKeys(const uint16_t* probs, int pstride,
                                                 const uint16_t* keys, int64_t stride,
                                                 int64_t head_dim, float acc[kTcMaxTiles][4]) {
  const int warp = TcGroupWarp(), lane = threadIdx.x % 32;
  // ldmatrix row addresses: matrices 0/1 rows 0-7 / 8-15, 2/3 eight columns on.
  const int mrow = (lane % 8) + 8 * ((lane / 8) % 2), mcol = 8 * (lane / 16);
  const int ntiles = static_cast<int>(head_dim / 32);
  // V = the key rows as B (row-major in k = keys, .trans): matrices (keys 0-7, n-tile n), (keys
  // 8-15, n-tile n), (keys 0-7, n-tile n + 1), (keys 8-15, n-tile n + 1).
  const uint16_t* v_row = keys + mrow * stride + warp * (head_dim / 4) + mcol;
  for (int kk = 0; kk < kTcKeys; kk += 16) {
    uint32_t a[4];
    LdMatrixX4(a, probs + mrow * pstride + kk + mcol);
#pragma unroll
    for (int n = 0; n < kTcMaxTiles; n += 2) {
      if (n < ntiles) {
        uint32_t b[4];
        LdMatrixX4Trans(b, v_row + kk * stride + 8 * n);
        MmaBf16(acc[n], a, b);
        MmaBf16(acc[n + 1], a, b + 2);
      }
    }
  }
}

// One staged tile (keys and valid filled, then __syncthreads by the caller): S = scale · Q Kᵀ,
// the online softmax update of run_max / run_sum (a max of -inf with no valid key yet leaves
// the accumulators untouched), acc = acc · rescale + P V. acc: this thread's fragments of the
// [16, D] f32 output (rows g and g + 8 of n-tile n, columns 2(l % 4), +1). Ends synchronised.
__device__ __forceinline__ void TcAttendTile(const TcTile& t, int64_t head_dim, float scale,
                                             float acc[kTcMaxTiles][4]) {
  const int warp = TcGroupWarp(), lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t stride = t.stride;
  {
    float c[2][4];
    TcWarpLogits(t.q, t.keys + 16 * warp * stride, stride, head_dim, c);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int col = 16 * warp + 8 * j + 2 * t4;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), key = col + (e & 1);
        t.scores[row * kTcKeys + key] = t.valid[key] != 0 ? scale * c[j][e] : -INFINITY;
      }
    }
  }
  __syncthreads();
  // Online softmax, warp w on rows 4w .. 4w + 3: new max, rescale, P in bf16, sums. The four
  // rows' loads come first and their shuffle reductions side by side (independent chains in
  // flight instead of one row's after another's; each row's arithmetic is unchanged).
  constexpr int kWarpRows = kTcHeads / kTcWarps;
  const int r0 = kWarpRows * warp;
  float s0[kWarpRows], s1[kWarpRows], old_max[kWarpRows], new_max[kWarpRows];
  float e0[kWarpRows], e1[kWarpRows], tile_sum[kWarpRows];
#pragma unroll
  for (int i = 0; i < kWarpRows; ++i) {
    s0[i] = t.scores[(r0 + i) * kTcKeys + lane];
    s1[i] = t.scores[(r0 + i) * kTcKeys + lane + 32];
    old_max[i] = t.run_max[r0 + i];
  }
#pragma unroll
  for (int i = 0; i < kWarpRows; ++i) new_max[i] = fmaxf(s0[i], s1[i]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
#pragma unroll
    for (int i = 0; i < kWarpRows; ++i) {
      new_max[i] = fmaxf(new_max[i], __shfl_xor_sync(0xffffffffu, new_max[i], offset));
    }
  }
#pragma unroll
  for (int i = 0; i < kWarpRows; ++i) {
    new_max[i] = fmaxf(old_max[i], new_max[i]);
    e0[i] = s0[i] == -INFINITY ? 0.0f : expf(s0[i] - new_max[i]);
    e1[i] = s1[i] == -INFINITY ? 0.0f : expf(s1[i] - new_max[i]);
    tile_sum[i] = e0[i] + e1[i];
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
#pragma unroll
    for (int i = 0; i < kWarpRows; ++i) {
      tile_sum[i] += __shfl_xor_sync(0xffffffffu, tile_sum[i], offset);
    }
  }
#pragma unroll
  for (int i = 0; i < kWarpRows; ++i) {
    const int r = r0 + i;
    const __nv_bfloat16 b0 = __float2bfloat16(e0[i]), b1 = __float2bfloat16(e1[i]);
    t.probs[r * (kTcKeys + 8) + lane] = *reinterpret_cast<const uint16_t*>(&b0);
    t.probs[r * (kTcKeys + 8) + lane + 32] = *reinterpret_cast<const uint16_t*>(&b1);
    if (lane == 0) {
      const float factor = new_max[i] == -INFINITY ? 1.0f : expf(old_max[i] - new_max[i]);
      t.rescale[r] = factor;
      t.run_sum[r] = t.run_sum[r] * factor + tile_sum[i];
      t.run_max[r] = new_max[i];
    }
  }
  __syncthreads();
  const float f0 = t.rescale[g], f1 = t.rescale[g + 8];
  const int ntiles = static_cast<int>(head_dim / 32);
#pragma unroll
  for (int n = 0; n < kTcMaxTiles; ++n) {
    if (n < ntiles) acc[n][0] *= f0, acc[n][1] *= f0, acc[n][2] *= f1, acc[n][3] *= f1;
  }
  TcProbsTimesKeys(t.probs, kTcKeys + 8, t.keys, stride, head_dim, acc);
  __syncthreads();
}

}  // namespace v4rl::kernels::cuda
