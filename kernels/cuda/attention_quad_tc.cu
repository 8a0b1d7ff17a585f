// The four-query tensor-core forward of SparseAttention (attention_quad_tc.h): a block takes four
// consecutive queries and 16 heads and walks one key list for all four (plan::SharedKeySlots: the
// union of their windows' raw rows, then compressed entries [0, n) — every entry the last query
// sees, or with picks every entry up to the largest pick, each query's picks counted in shared
// memory), so each 64-key tile is gathered once for four queries instead of once a query. A query
// takes a key at its weight (plan::SharedSlotWeight: 0 for keys outside its set, the pick count
// for entries). Eight warps, two a query: warp (q, h) computes S = Q·Kᵀ for keys [32h, 32h + 32)
// of the tile, the online softmax runs in registers (the pair's partial row maxima meet in shared
// memory behind a 64-thread named barrier), P goes to shared memory in bf16, and the warp adds
// P·V for output columns [256h, 256h + 256) (128 f32 accumulators a thread). The next tile's rows
// stream in with cp.async while the current one is computed: one block barrier a tile.
// head_dim 512 (V4's) only; fp32 accumulation, probabilities rounded to bf16 for P·V.
#include <cuda_bf16.h>

#include "absl/strings/str_format.h"
#include "kernels/cuda/attention_quad_tc.h"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kQueries = 4;
constexpr int kWarps = 2 * kQueries;  // two warps a query: keys split for S, columns for P·V
constexpr int kThreads = 32 * kWarps;
constexpr int kHeads = 16;
constexpr int kKeys = 64;  // keys a tile
constexpr int kD = static_cast<int>(kQuadHeadDim);
constexpr int kStride = kD + 8;  // bf16 elements between staged rows (bank padding)
constexpr int kPStride = kKeys + 8;
constexpr int kHalfColumns = kD / 2;
constexpr int kColumnTiles = kHalfColumns / 8;  // P·V n-tiles of 8 columns a warp
constexpr int kSlots = 3;  // row and weight buffers: tile n's, n + 1's gather, n + 2's fill
constexpr int kPiecesPerRow = kD / 8;  // 16-byte pieces

// Shared memory of a block (~217 KiB: one block a SM).
struct QuadSmem {
  uint16_t q[kQueries][kHeads][kStride];
  uint16_t keys[2][kKeys][kStride];
  uint16_t probs[kQueries][kHeads][kPStride];
  uint32_t counts[kQuadMaxPickedEntries][kQueries / 2];  // query 2c + b's picks: bits [16b, +16)
  const uint16_t* rows[kSlots][kKeys];                   // null: past the key list
  int weights[kSlots][kQueries][kKeys];
  float partner[kQueries][2][kHeads];  // the pair's partial row maxima, then row sums
  int max_entry;
};

// The two warps of query q meet (named barrier q + 1; 0 is __syncthreads').
__device__ __forceinline__ void PairBarrier(int q) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(q + 1), "n"(64) : "memory");
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// grid (ceil(num_q / 4), head groups of 16); block x takes queries from the end (the blocks with
// the most keys start first).
__global__ void __launch_bounds__(kThreads, 1) SparseAttentionQuadTcKernel(QuadAttentionParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  QuadSmem& s = *reinterpret_cast<QuadSmem*>(smem_raw);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int mine = warp % kQueries, half = warp / kQueries;  // this warp's query and half

  const int64_t first_query = (int64_t{gridDim.x} - 1 - blockIdx.x) * kQueries;
  const int64_t last_query = Min64(first_query + kQueries, p.num_q) - 1;
  const int64_t h0 = int64_t{blockIdx.y} * kHeads;
  const int heads = static_cast<int>(Min64(kHeads, p.num_heads - h0));
  const int64_t my_query = first_query + mine;
  const bool my_active = my_query <= last_query;

  // Q rows of the four queries (zero rows past the last head or query).
  for (int e = tid; e < kQueries * kHeads * kPiecesPerRow; e += kThreads) {
    const int q = e / (kHeads * kPiecesPerRow), h = (e / kPiecesPerRow) % kHeads;
    const int v = e % kPiecesPerRow;
    const bool valid = first_query + q <= last_query && h < heads;
    const uint16_t* src = p.q + ((first_query + q) * p.num_heads + h0 + h) * kD + v * 8;
    CpAsync16(&s.q[q][h][v * 8], valid ? src : p.q, valid);
  }
  CpAsyncCommit();

  // The shared key list: with picks, each query's pick counts and one past the largest pick.
  int64_t entries = 0;
  if (p.comp_kv != nullptr && p.comp_idx == nullptr) {
    entries = Min64(plan::NumVisibleCompressed(p.q_pos0 + last_query, p.comp_ratio), p.num_comp);
  } else if (p.comp_kv != nullptr) {
    uint32_t* counts = &s.counts[0][0];
    for (int e = tid; e < kQuadMaxPickedEntries * kQueries / 2; e += kThreads) counts[e] = 0;
    if (tid == 0) s.max_entry = 0;
    __syncthreads();
    for (int q = 0; q < kQueries && first_query + q <= last_query; ++q) {
      const int32_t* picks = p.comp_idx + (first_query + q) * p.comp_topk;
      for (int64_t k = tid; k < p.comp_topk; k += kThreads) {
        const int32_t e = picks[k];
        if (e >= 0 && e < p.num_comp) {
          atomicAdd(&s.counts[e][q / 2], 1u << (16 * (q % 2)));
          atomicMax(&s.max_entry, e + 1);
        }
      }
    }
    __syncthreads();
    entries = s.max_entry;
  }
  const plan::SharedKeySlots slots = plan::SharedSlots(
      p.q_pos0 + first_query, p.q_pos0 + last_query, p.window, p.kv_pos0, entries);
  const int64_t total = slots.total();
  const int num_tiles = static_cast<int>((total + kKeys - 1) / kKeys);

  // Tile n's key rows and the four queries' weights into slot n % 3: thread (q, key).
  auto fill = [&](int n) {
    const int key = tid % kKeys, q = tid / kKeys, slot = n % kSlots;
    const int64_t j = int64_t{n} * kKeys + key;
    int weight = 0;
    if (j < total && first_query + q <= last_query) {
      int picks = -1;
      if (p.comp_idx != nullptr && j >= slots.num_window) {
        picks =
            static_cast<int>((s.counts[j - slots.num_window][q / 2] >> (16 * (q % 2))) & 0xffffu);
      }
      weight = plan::SharedSlotWeight(slots, j, p.q_pos0 + first_query + q, p.window, p.kv_pos0,
                                      picks, p.comp_ratio, p.num_comp);
    }
    s.weights[slot][q][key] = weight;
    if (q == 0) {
      const uint16_t* row = nullptr;
      if (j < total) {
        row = j < slots.num_window ? p.kv + (slots.first - p.kv_pos0 + j) * kD
                                   : p.comp_kv + (j - slots.num_window) * kD;
      }
      s.rows[slot][key] = row;
    }
  };
  // Starts copying tile n's rows (slot n % 3) into key buffer n % 2: thread t keeps piece t % 64.
  auto gather = [&](int n) {
    const uint16_t* const* rows = s.rows[n % kSlots];
    const int v = tid % kPiecesPerRow;
#pragma unroll 4
    for (int key = tid / kPiecesPerRow; key < kKeys; key += kThreads / kPiecesPerRow) {
      const uint16_t* row = rows[key];
      CpAsync16(&s.keys[n % 2][key][v * 8], row != nullptr ? row + v * 8 : p.kv, row != nullptr);
    }
    CpAsyncCommit();
  };

  fill(0);
  if (num_tiles > 1) fill(1);
  __syncthreads();
  gather(0);

  // Rows g and g + 8 of the warp's query: running max (from the sink), this thread's part of the
  // running sum, and the output columns [256·half, + 256) of the mma C layout.
  float run_max[2], run_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < 2; ++r) run_max[r] = g + 8 * r < heads ? p.sink[h0 + g + 8 * r] : 0.0f;
  float acc[kColumnTiles][4];
#pragma unroll
  for (int n = 0; n < kColumnTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

  // ldmatrix row addresses (attention_tile.cuh's TcWarpLogits and TcProbsTimesKeys).
  const int mrow = (lane % 8) + 8 * ((lane / 8) % 2), mcol = 8 * (lane / 16);
  const int krow = (lane % 8) + 8 * (lane / 16), kcol = 8 * ((lane / 8) % 2);
  const uint16_t* q_row = &s.q[mine][mrow][mcol];
  const uint16_t* p_row = &s.probs[mine][mrow][mcol];

  for (int n = 0; n < num_tiles; ++n) {
    CpAsyncWait<0>();
    __syncthreads();  // tile n's keys are in; every warp is done with tile n - 1
    if (n + 1 < num_tiles) gather(n + 1);
    if (n + 2 < num_tiles) fill(n + 2);
    const uint16_t(*keys)[kStride] = s.keys[n % 2];
    const int* weights = s.weights[n % kSlots][mine];

    // S for the warp's 32 keys: n-tile j holds keys 32·half + 8j + 2·t4 (+1), rows g, g + 8.
    float c[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
    {
      const uint16_t* k_row = &keys[32 * half + krow][kcol];
#pragma unroll
      for (int kk = 0; kk < kD; kk += 16) {
        uint32_t a[4], b0[4], b1[4];
        LdMatrixX4(a, q_row + kk);
        LdMatrixX4(b0, k_row + kk);
        LdMatrixX4(b1, k_row + 16 * kStride + kk);
        MmaBf16(c[0], a, b0);
        MmaBf16(c[1], a, b0 + 2);
        MmaBf16(c[2], a, b1);
        MmaBf16(c[3], a, b1 + 2);
      }
    }
    int weight[4][2];
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        weight[j][e] = weights[32 * half + 8 * j + 2 * t4 + e];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          c[j][2 * r + e] = weight[j][e] != 0 ? p.scale * c[j][2 * r + e] : -INFINITY;
          tile_max[r] = fmaxf(tile_max[r], c[j][2 * r + e]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) tile_max[r] = QuadMax(tile_max[r]);
    if (t4 == 0) {
      s.partner[mine][half][g] = tile_max[0];
      s.partner[mine][half][g + 8] = tile_max[1];
    }
    PairBarrier(mine);
    float factor[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float other = s.partner[mine][half ^ 1][g + 8 * r];
      const float new_max = fmaxf(run_max[r], fmaxf(tile_max[r], other));
      factor[r] = new_max == -INFINITY ? 1.0f : expf(run_max[r] - new_max);
      run_max[r] = new_max;
      run_sum[r] *= factor[r];
    }
    // P = weight · exp(S - max) into shared memory (bf16); this thread's sums in f32.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = 32 * half + 8 * j + 2 * t4;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float prob[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          prob[e] = weight[j][e] != 0
                        ? static_cast<float>(weight[j][e]) * expf(c[j][2 * r + e] - run_max[r])
                        : 0.0f;
          run_sum[r] += prob[e];
        }
        *reinterpret_cast<uint32_t*>(&s.probs[mine][g + 8 * r][col]) = PackBf16(prob[0], prob[1]);
      }
    }
    PairBarrier(mine);  // both halves of P are in
    if (factor[0] != 1.0f || factor[1] != 1.0f) {
#pragma unroll
      for (int n2 = 0; n2 < kColumnTiles; ++n2) {
        acc[n2][0] *= factor[0], acc[n2][1] *= factor[0];
        acc[n2][2] *= factor[1], acc[n2][3] *= factor[1];
      }
    }
    // acc += P · V over the tile's 64 keys, the warp's columns.
    const uint16_t* v_row = &keys[mrow][half * kHalfColumns + mcol];
#pragma unroll
    for (int kk = 0; kk < kKeys; kk += 16) {
      uint32_t a[4];
      LdMatrixX4(a, p_row + kk);
#pragma unroll
      for (int n2 = 0; n2 < kColumnTiles; n2 += 2) {
        uint32_t b[4];
        LdMatrixX4Trans(b, v_row + kk * kStride + 8 * n2);
        MmaBf16(acc[n2], a, b);
        MmaBf16(acc[n2 + 1], a, b + 2);
      }
    }
  }

  // The pair's row sums meet (half 0's part first), the sink joins the denominator.
#pragma unroll
  for (int r = 0; r < 2; ++r) run_sum[r] = QuadSum(run_sum[r]);
  if (t4 == 0) {
    s.partner[mine][half][g] = run_sum[0];
    s.partner[mine][half][g + 8] = run_sum[1];
  }
  PairBarrier(mine);
  if (!my_active) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    if (row >= heads) continue;
    const float sum = s.partner[mine][0][row] + s.partner[mine][1][row];
    const float denom = sum + expf(p.sink[h0 + row] - run_max[r]);
    const int64_t out_row = (my_query * p.num_heads + h0 + row) * kD + half * kHalfColumns;
#pragma unroll
    for (int n2 = 0; n2 < kColumnTiles; ++n2) {
      const int64_t at = out_row + 8 * n2 + 2 * t4;
      const float x = acc[n2][2 * r] / denom, y = acc[n2][2 * r + 1] / denom;
      if (p.out_bf16) {
        *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(p.out) + at) = PackBf16(x, y);
      } else {
        *reinterpret_cast<float2*>(static_cast<float*>(p.out) + at) = make_float2(x, y);
      }
    }
    if (p.lse != nullptr && half == 0 && t4 == 0) {
      p.lse[my_query * p.num_heads + h0 + row] = run_max[r] + logf(denom);
    }
  }
}

}  // namespace

absl::Status LaunchSparseAttentionQuadTc(const QuadAttentionParams& p) {
  const size_t shared = sizeof(QuadSmem);
  if (cudaError_t e = cudaFuncSetAttribute(SparseAttentionQuadTcKernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared));
      e != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("SparseAttention: %d bytes of shared memory: %s",
                                               shared, cudaGetErrorString(e)));
  }
  const dim3 grid(static_cast<unsigned>((p.num_q + kQueries - 1) / kQueries),
                  static_cast<unsigned>((p.num_heads + kHeads - 1) / kHeads));
  LaunchKernel(SparseAttentionQuadTcKernel, grid, kThreads, shared, p);
  return LaunchStatus("SparseAttention (tensor cores, four queries)");
}

}  // namespace v4rl::kernels::cuda
