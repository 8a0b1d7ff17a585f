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
#include "absl/strings/str_format.h"
#include "kernels/cuda/attention_quad.cuh"
#include "kernels/cuda/attention_quad_tc.h"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kD = kQuadD;
constexpr int kStride = kQuadStride;
constexpr int kKeys = kQuadKeys;
constexpr int kPStride = kKeys + 8;
constexpr int kHalfColumns = kD / 2;
constexpr int kColumnTiles = kHalfColumns / 8;  // P·V n-tiles of 8 columns a warp
constexpr int kSlots = 3;  // row and weight buffers: tile n's, n + 1's gather, n + 2's fill

// Shared memory of a block (~217 KiB: one block a SM).
struct QuadSmem {
  uint16_t q[kQuadQueries][kQuadHeads][kStride];
  uint16_t keys[2][kKeys][kStride];
  uint16_t probs[kQuadQueries][kQuadHeads][kPStride];
  QuadPickCounts counts;
  const uint16_t* rows[kSlots][kKeys];  // null: past the key list
  int weights[kSlots][kQuadQueries][kKeys];
  float partner[kQuadQueries][2][kQuadHeads];  // the pair's partial row maxima, then row sums
  int max_entry;
};

// The two warps of query q meet (named barrier q + 1; 0 is __syncthreads').
__device__ __forceinline__ void PairBarrier(int q) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(q + 1), "n"(64) : "memory");
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// grid (ceil(num_q / 4), head groups of 16).
__global__ void __launch_bounds__(kQuadThreads, 1)
    SparseAttentionQuadTcKernel(QuadAttentionParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  QuadSmem& s = *reinterpret_cast<QuadSmem*>(smem_raw);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int mine = warp % kQuadQueries, half = warp / kQuadQueries;  // this warp's query, half

  const QuadBlock b = QuadSetUp(p.keys, s.counts, &s.max_entry);
  const int64_t h0 = int64_t{blockIdx.y} * kQuadHeads;
  const int heads = static_cast<int>(Min64(kQuadHeads, p.num_heads - h0));
  const int64_t my_query = b.first_query + mine;
  const bool my_active = my_query <= b.last_query;
  QuadLoadRows(s.q, p.q, b, p.num_heads, h0, heads);
  CpAsyncCommit();
  const int64_t total = b.slots.total();
  const int num_tiles = static_cast<int>((total + kKeys - 1) / kKeys);

  // Tile n's key rows and the four queries' weights into slot n % 3: thread (q, key).
  auto fill = [&](int n) {
    const int key = tid % kKeys, q = tid / kKeys, slot = n % kSlots;
    const int64_t j = int64_t{n} * kKeys + key;
    s.weights[slot][q][key] = j < total ? QuadWeight(p.keys, b, s.counts, q, j) : 0;
    if (q == 0) {
      const uint16_t* row = nullptr;
      if (j < total) {
        bool compressed;
        const int64_t index = QuadRowIndex(p.keys, b, j, &compressed);
        row = (compressed ? p.comp_kv : p.kv) + index * kD;
      }
      s.rows[slot][key] = row;
    }
  };
  auto gather = [&](int n) { QuadStartGather(s.keys[n % 2], s.rows[n % kSlots], p.kv); };

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
        *reinterpret_cast<uint32_t*>(&s.probs[mine][g + 8 * r][col]) = PackBf16x2(prob[0], prob[1]);
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
        *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(p.out) + at) = PackBf16x2(x, y);
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
  const dim3 grid(static_cast<unsigned>((p.keys.num_q + kQuadQueries - 1) / kQuadQueries),
                  static_cast<unsigned>((p.num_heads + kQuadHeads - 1) / kQuadHeads));
  LaunchKernel(SparseAttentionQuadTcKernel, grid, kQuadThreads, shared, p);
  return LaunchStatus("SparseAttention (tensor cores, four queries)");
}

}  // namespace v4rl::kernels::cuda
