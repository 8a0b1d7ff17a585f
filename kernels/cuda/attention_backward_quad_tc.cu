// The four-query tensor-core backward of SparseAttentionBackward (attention_backward.h,
// tensor_cores, head_dim 512, SharedKeyListApplies): block (four consecutive queries, 16 heads)
// over their shared key list (attention_quad.cuh). Eight warps, two a query: warp (q, h) computes
// S = Q·Kᵀ and dP = dO·Kᵀ for keys [32h, 32h + 32) of a 64-key tile, P = weight · exp(scale·S -
// lse) and scale·dS = scale · P ∘ (dP - Δ) in registers, rounded to bf16 into the query's dS|P
// tile (attention_backward_tile.cuh's layout: rows 0-15 scale·dS, 16-31 P), then dQ += (scale·dS)
// · K for output columns [256h, 256h + 256) (128 f32 accumulators a thread). The tile's key-row
// gradients Σ_q [scale·dS_q; P_q]ᵀ · [Q_q; dO_q] are summed over the four queries before the
// atomics (TcAddKeyRowGrads<4>: warp v on keys [16 (v % 4), + 16), columns [256 (v / 4), + 256)),
// half the atomic traffic of the query-pair kernel, while the next tile's rows stream in. A block
// starts its walk at tile (block % tiles), as the other backward kernels do, to spread the
// atomics. fp32 accumulation; dq is bit-reproducible, dkv / dcomp_kv / dsink are not.
#include "absl/strings/str_format.h"
#include "kernels/cuda/attention_backward_quad_tc.h"
#include "kernels/cuda/attention_backward_tile.cuh"
#include "kernels/cuda/attention_quad.cuh"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kD = kQuadD;
constexpr int kStride = kQuadStride;
constexpr int kKeys = kQuadKeys;
constexpr int kHalfColumns = kD / 2;
constexpr int kColumnTiles = kHalfColumns / 8;  // dQ n-tiles of 8 columns a warp

// Shared memory of a block (~225 KiB: one block a SM): the four queries' Q and dO rows, one key
// tile, their dS|P tiles, two buffers of the tile's source rows, gradient rows and weights.
struct QuadBackwardSmem {
  uint16_t q[kQuadQueries][kQuadHeads][kStride];
  uint16_t dout[kQuadQueries][kQuadHeads][kStride];
  uint16_t keys[kKeys][kStride];
  uint16_t ds_p[kQuadQueries][2 * kQuadHeads][kPStride];
  QuadPickCounts counts;
  const uint16_t* rows[2][kKeys];  // null: past the key list
  float* grad_rows[2][kKeys];
  int weights[2][kQuadQueries][kKeys];
  float lse[kQuadQueries][kQuadHeads];
  float delta[kQuadQueries][kQuadHeads];
  int max_entry;
};

// Δ = dO·O (dO as staged in bf16, as dP uses it) and lse of rows [8·half, + 8) of query `mine`
// into s.delta and s.lse (zeros past `heads` or the last query), and the sink's gradient. Each
// lane takes columns 4·lane + 128·k of a row; the eight rows' loads are issued together (rows
// outside the block read the first query's first row and are zeroed).
__device__ __forceinline__ void QuadDeltaAndLse(const SharedKeysBackwardParams& p,
                                                QuadBackwardSmem& s, const QuadBlock& b, int mine,
                                                int half, int64_t h0, int heads) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t query = b.first_query + mine, H = p.num_heads;
  const bool active = query <= b.last_query;
  float sums[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int r = 8 * half + i;
    const bool real = active && r < heads;
    const int64_t out_row = real ? (query * H + h0 + r) * kD : (b.first_query * H + h0) * kD;
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kD / 128; ++k) {
      const int c = 4 * lane + 128 * k;
      float o[4];
      if (p.out_bf16) {
        const uint2 raw =
            *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p.out) + out_row + c);
        o[0] = __uint_as_float(raw.x << 16), o[1] = __uint_as_float(raw.x & 0xffff0000u);
        o[2] = __uint_as_float(raw.y << 16), o[3] = __uint_as_float(raw.y & 0xffff0000u);
      } else {
        const float4 v =
            *reinterpret_cast<const float4*>(static_cast<const float*>(p.out) + out_row + c);
        o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
      }
      const uint2 d = *reinterpret_cast<const uint2*>(&s.dout[mine][r][c]);
      sum = fmaf(__uint_as_float(d.x << 16), o[0], sum);
      sum = fmaf(__uint_as_float(d.x & 0xffff0000u), o[1], sum);
      sum = fmaf(__uint_as_float(d.y << 16), o[2], sum);
      sum = fmaf(__uint_as_float(d.y & 0xffff0000u), o[3], sum);
    }
    sums[i] = real ? sum : 0.0f;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
#pragma unroll
    for (int i = 0; i < 8; ++i) sums[i] += __shfl_xor_sync(0xffffffffu, sums[i], offset);
  }
  if (lane < 8) {
    const int r = 8 * half + lane;
    float delta = sums[0];
#pragma unroll
    for (int i = 1; i < 8; ++i) delta = lane == i ? sums[i] : delta;
    const bool real = active && r < heads;
    const float lse = real ? p.lse[query * H + h0 + r] : 0.0f;
    s.delta[mine][r] = delta;
    s.lse[mine][r] = lse;
    if (real && p.dsink != nullptr)
      atomicAdd(&p.dsink[h0 + r], -expf(p.sink[h0 + r] - lse) * delta);
  }
}

__global__ void __launch_bounds__(kQuadThreads, 1)
    SparseAttentionBackwardQuadTcKernel(SharedKeysBackwardParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  QuadBackwardSmem& s = *reinterpret_cast<QuadBackwardSmem*>(smem_raw);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int mine = warp % kQuadQueries, half = warp / kQuadQueries;  // this warp's query, half

  const QuadBlock b = QuadSetUp(p.keys, s.counts, &s.max_entry);
  const int64_t H = p.num_heads, h0 = int64_t{blockIdx.y} * kQuadHeads;
  const int heads = static_cast<int>(Min64(kQuadHeads, H - h0));
  const int64_t my_query = b.first_query + mine;
  const bool my_active = my_query <= b.last_query;
  QuadLoadRows(s.q, p.q, b, H, h0, heads);
  QuadLoadRows(s.dout, p.dout, b, H, h0, heads);
  CpAsyncCommit();
  const int64_t total = b.slots.total();
  const int num_tiles = static_cast<int>((total + kKeys - 1) / kKeys);
  const int first_tile = static_cast<int>(blockIdx.x % num_tiles);

  // The walk's n-th tile's rows, gradient rows and weights into buffer n % 2: thread (q, key).
  auto fill = [&](int n) {
    const int key = tid % kKeys, q = tid / kKeys, buf = n % 2;
    const int64_t j = int64_t{(first_tile + n) % num_tiles} * kKeys + key;
    s.weights[buf][q][key] = j < total ? QuadWeight(p.keys, b, s.counts, q, j) : 0;
    if (q == 0) {
      const uint16_t* row = nullptr;
      float* grad = nullptr;
      if (j < total) {
        bool compressed;
        const int64_t index = QuadRowIndex(p.keys, b, j, &compressed);
        row = (compressed ? p.comp_kv : p.kv) + index * kD;
        grad = (compressed ? p.dcomp_kv : p.dkv) + index * kD;
      }
      s.rows[buf][key] = row;
      s.grad_rows[buf][key] = grad;
    }
  };
  fill(0);
  __syncthreads();  // tile 0's rows
  QuadStartGather(s.keys, s.rows[0], p.kv);
  CpAsyncWait<1>();
  __syncthreads();  // Q and dO are in; tile 0's keys arrive while Δ is computed
  QuadDeltaAndLse(p, s, b, mine, half, h0, heads);
  CpAsyncWait<0>();
  __syncthreads();  // tile 0's keys, Δ and lse

  float dq[kColumnTiles][4];
#pragma unroll
  for (int n = 0; n < kColumnTiles; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
  float row_lse[2], row_delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_lse[r] = s.lse[mine][g + 8 * r];
    row_delta[r] = s.delta[mine][g + 8 * r];
  }

  // ldmatrix row addresses (attention_tile.cuh's TcWarpLogits and TcProbsTimesKeys).
  const int mrow = (lane % 8) + 8 * ((lane / 8) % 2), mcol = 8 * (lane / 16);
  const int krow = (lane % 8) + 8 * (lane / 16), kcol = 8 * ((lane / 8) % 2);
  const uint16_t* q_row = &s.q[mine][mrow][mcol];
  const uint16_t* do_row = &s.dout[mine][mrow][mcol];
  const uint16_t* k_row = &s.keys[32 * half + krow][kcol];
  const uint16_t* ds_row = &s.ds_p[mine][mrow][mcol];
  const uint16_t* v_row = &s.keys[mrow][half * kHalfColumns + mcol];

  for (int n = 0; n < num_tiles; ++n) {
    const int buf = n % 2;
    // S and dP of the warp's 32 keys: n-tile j holds keys 32·half + 8j + 2·t4 (+1), rows g, g + 8.
    float sc[4][4], dp[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
      dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
    }
#pragma unroll 4
    for (int kk = 0; kk < kD; kk += 16) {
      uint32_t a[4], a_do[4], b0[4], b1[4];
      LdMatrixX4(b0, k_row + kk);
      LdMatrixX4(b1, k_row + 16 * kStride + kk);
      LdMatrixX4(a, q_row + kk);
      LdMatrixX4(a_do, do_row + kk);
      MmaBf16(sc[0], a, b0);
      MmaBf16(sc[1], a, b0 + 2);
      MmaBf16(sc[2], a, b1);
      MmaBf16(sc[3], a, b1 + 2);
      MmaBf16(dp[0], a_do, b0);
      MmaBf16(dp[1], a_do, b0 + 2);
      MmaBf16(dp[2], a_do, b1);
      MmaBf16(dp[3], a_do, b1 + 2);
    }
    // P = weight · exp(scale·S - lse), scale·dS = scale · P ∘ (dP - Δ) into the dS|P tile, bf16;
    // rows past `heads` zero.
    const int* weights = s.weights[buf][mine];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = 32 * half + 8 * j + 2 * t4;
      const int w0 = weights[col], w1 = weights[col + 1];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        float prob[2] = {0.0f, 0.0f}, ds[2] = {0.0f, 0.0f};
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int weight = e == 0 ? w0 : w1;
          if (weight != 0 && row < heads) {
            prob[e] = static_cast<float>(weight) * expf(p.scale * sc[j][2 * r + e] - row_lse[r]);
            ds[e] = prob[e] * (dp[j][2 * r + e] - row_delta[r]);
          }
        }
        *reinterpret_cast<uint32_t*>(&s.ds_p[mine][row][col]) =
            PackBf16x2(p.scale * ds[0], p.scale * ds[1]);
        *reinterpret_cast<uint32_t*>(&s.ds_p[mine][kQuadHeads + row][col]) =
            PackBf16x2(prob[0], prob[1]);
      }
    }
    const bool more = n + 1 < num_tiles;
    if (more) fill(n + 1);  // the other buffers
    __syncthreads();        // every query's dS|P is in
                            // dQ += (scale·dS) · K over the tile's keys, the warp's columns.
#pragma unroll
    for (int kk = 0; kk < kKeys; kk += 16) {
      uint32_t a[4];
      LdMatrixX4(a, ds_row + kk);
#pragma unroll
      for (int n2 = 0; n2 < kColumnTiles; n2 += 2) {
        uint32_t bv[4];
        LdMatrixX4Trans(bv, v_row + kk * kStride + 8 * n2);
        MmaBf16(dq[n2], a, bv);
        MmaBf16(dq[n2 + 1], a, bv + 2);
      }
    }
    __syncthreads();  // every warp is done with the keys
    if (more) QuadStartGather(s.keys, s.rows[buf ^ 1], p.kv);
    // The four queries' key-row gradients while the next tile's keys arrive.
    {
      const uint16_t* const ds_p_of[kQuadQueries] = {&s.ds_p[0][0][0], &s.ds_p[1][0][0],
                                                     &s.ds_p[2][0][0], &s.ds_p[3][0][0]};
      const uint16_t* const q_of[kQuadQueries] = {&s.q[0][0][0], &s.q[1][0][0], &s.q[2][0][0],
                                                  &s.q[3][0][0]};
      const uint16_t* const dout_of[kQuadQueries] = {&s.dout[0][0][0], &s.dout[1][0][0],
                                                     &s.dout[2][0][0], &s.dout[3][0][0]};
      const bool use[kQuadQueries] = {true, b.first_query + 1 <= b.last_query,
                                      b.first_query + 2 <= b.last_query,
                                      b.first_query + 3 <= b.last_query};
      const int64_t col_begin = (warp / 4) * kHalfColumns;
      TcAddKeyRowGrads<kQuadQueries>(ds_p_of, q_of, dout_of, use, kStride, 16 * (warp % 4),
                                     col_begin, col_begin + kHalfColumns, s.grad_rows[buf],
                                     p.grads_vec4);
    }
    CpAsyncWait<0>();
    __syncthreads();  // the next tile's keys are in; dS|P and this tile's rows may be refilled
  }
  if (!my_active) return;
    // dq rows g and g + 8 of the warp's query, columns [256·half, + 256): added.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    if (row >= heads) continue;
    float* dst = p.dq + (my_query * H + h0 + row) * kD + half * kHalfColumns;
#pragma unroll
    for (int n2 = 0; n2 < kColumnTiles; ++n2) {
      float2* at = reinterpret_cast<float2*>(dst + 8 * n2 + 2 * t4);
      float2 v = *at;
      v.x += dq[n2][2 * r];
      v.y += dq[n2][2 * r + 1];
      *at = v;
    }
  }
}

}  // namespace

absl::Status LaunchSparseAttentionBackwardQuadTc(const SparseAttentionBackwardArgs& a) {
  const int64_t num_q = a.q.shape[0], heads = a.q.shape[1];
  const SharedKeysBackwardParams p = SharedKeysBackwardParamsOf(a);
  const size_t shared = sizeof(QuadBackwardSmem);
  if (cudaError_t e = cudaFuncSetAttribute(SparseAttentionBackwardQuadTcKernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared));
      e != cudaSuccess) {
    return absl::InternalError(absl::StrFormat(
        "SparseAttentionBackward: %d bytes of shared memory: %s", shared, cudaGetErrorString(e)));
  }
  const dim3 grid(static_cast<unsigned>((num_q + kQuadQueries - 1) / kQuadQueries),
                  static_cast<unsigned>((heads + kQuadHeads - 1) / kQuadHeads));
  LaunchKernel(SparseAttentionBackwardQuadTcKernel, grid, kQuadThreads, shared, p);
  return LaunchStatus("SparseAttentionBackward (tensor cores, four queries)");
}

}  // namespace v4rl::kernels::cuda
