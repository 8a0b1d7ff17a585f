// The query-pair tensor-core backward of SparseAttentionBackward (attention_backward.h,
// tensor_cores = true, SharedKeyListApplies): block (pair of queries, 16 heads) over the pair's
// shared key list (attention_pair.cuh), a group of four warps per query for P, dS and dQ as the
// one-query kernel (attention_backward_tile.cuh; warp w of a group on keys [16w, 16w + 16) and dQ
// columns [w·D/4, (w+1)·D/4)); the key-row gradients of both queries are summed before the
// atomics: warp v of the block on keys [16 (v % 4), + 16) and columns [(v / 4)·D/2, + D/2),
// K = 2 × 32 rows. Like the one-query kernel the walk starts at tile (block % tiles) and the
// next tile's rows stream in while the key-row gradients go out.
#include "kernels/cuda/attention_backward_pair_tc.h"

#include "kernels/cuda/attention_backward_tile.cuh"
#include "kernels/cuda/attention_pair.cuh"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {
namespace {

// Shared memory per query: q and dO [16][D + 8] bf16, scale·dS and P [2 · 16][kPStride] bf16,
// lse and Δ [16] f32, two buffers' key weights [2][kTcKeys] i32.
__host__ __device__ inline size_t PairGroupBytes(int64_t head_dim) {
  const int64_t stride = head_dim + 8;
  return sizeof(uint16_t) * (2 * kTcHeads * stride + 2 * kTcHeads * kPStride) +
         sizeof(float) * 2 * kTcHeads + sizeof(int) * 2 * kTcKeys;
}

// Keys [kTcKeys][D + 8] bf16, two buffers' source and gradient rows, the two queries' parts and
// the pick counts [2][kPairMaxPickedEntries] i32 with the largest entry. Parts multiples of 16.
size_t PairBackwardSharedBytes(int64_t head_dim) {
  const int64_t stride = head_dim + 8;
  return sizeof(uint16_t) * kTcKeys * stride +
         2 * (sizeof(const uint16_t*) + sizeof(float*)) * kTcKeys +
         kPairQueries * PairGroupBytes(head_dim) +
         sizeof(int) * (kPairQueries * kPairMaxPickedEntries + 4);
}

struct GroupSmem {
  uint16_t* q;
  uint16_t* dout;
  uint16_t* ds_p;  // rows 0-15 scale·dS, 16-31 P; columns the tile's keys
  float* lse;
  float* delta;
  int* weights;  // [2][kTcKeys]
};

__device__ __forceinline__ GroupSmem CarveGroup(unsigned char* base, int64_t stride) {
  GroupSmem s;
  s.q = reinterpret_cast<uint16_t*>(base);
  s.dout = s.q + kTcHeads * stride;
  s.ds_p = s.dout + kTcHeads * stride;
  s.lse = reinterpret_cast<float*>(s.ds_p + 2 * kTcHeads * kPStride);
  s.delta = s.lse + kTcHeads;
  s.weights = reinterpret_cast<int*>(s.delta + kTcHeads);
  return s;
}

__global__ void __launch_bounds__(kPairThreads)
    SparseAttentionBackwardPairTcKernel(SharedKeysBackwardParams p) {
  WaitForPriorKernels();
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t D = p.head_dim, stride = D + 8, H = p.num_heads;
  unsigned char* cursor = smem;
  uint16_t* k_s = reinterpret_cast<uint16_t*>(cursor);
  cursor += sizeof(uint16_t) * kTcKeys * stride;
  const uint16_t** rows = reinterpret_cast<const uint16_t**>(cursor);  // [2][kTcKeys]
  cursor += 2 * sizeof(const uint16_t*) * kTcKeys;
  float** grad_rows = reinterpret_cast<float**>(cursor);  // [2][kTcKeys]
  cursor += 2 * sizeof(float*) * kTcKeys;
  unsigned char* const group_base = cursor;  // the queries' parts, PairGroupBytes(D) each
  cursor += kPairQueries * PairGroupBytes(D);
  int* counts = reinterpret_cast<int*>(cursor);
  int* max_entry = counts + kPairQueries * kPairMaxPickedEntries;

  const int q = static_cast<int>(threadIdx.x) / kTcThreads;  // this thread's query of the pair
  const GroupSmem mine = CarveGroup(group_base + q * PairGroupBytes(D), stride);
  const int warp = TcGroupWarp(), gt = TcGroupThread();
  const PairBlock b = PairSetUp(p.keys, counts, max_entry);
  const int64_t h0 = int64_t{blockIdx.y} * kTcHeads;
  const int heads = PairActive(b, q) ? static_cast<int>(Min64(kTcHeads, H - h0)) : 0;
  const int64_t query = PairActive(b, q) ? PairQuery(b, q) : b.query[0];  // inactive: reads nothing
  TcTile q_tile{};  // the fields TcLoadQueries uses
  q_tile.q = mine.q, q_tile.stride = stride;
  TcTile dout_tile = q_tile;
  dout_tile.q = mine.dout;
  TcLoadQueries(q_tile, p.q + (query * H + h0) * D, heads, D);
  TcLoadQueries(dout_tile, p.dout + (query * H + h0) * D, heads, D);
  CpAsyncWait<0>();
  __syncthreads();
  TcDeltaAndLse(mine.dout, stride, p.out, p.out_bf16, (query * H + h0) * D, p.lse + query * H + h0,
                heads, D, mine.delta, mine.lse);

  const int64_t total = b.slots.total();
  const int num_tiles = static_cast<int>((total + kTcKeys - 1) / kTcKeys);
  const int first_tile = static_cast<int>(blockIdx.x % num_tiles);
  // Threads < kTcKeys of each group: the weights of the walk's n-th tile for the group's query
  // into buffer n % 2; of the first group also the keys' source and gradient rows.
  auto fill_tile = [&](int n) {
    if (gt >= kTcKeys) return;
    const int buf = (n % 2) * kTcKeys;
    const int64_t j = int64_t{(first_tile + n) % num_tiles} * kTcKeys + gt;
    mine.weights[buf + gt] = j < total ? PairWeight(p.keys, b, counts, q, j) : 0;
    if (q == 0) {
      const uint16_t* row = nullptr;
      float* grad = nullptr;
      if (j < total) {
        bool compressed;
        const int64_t index = PairRowIndex(p.keys, b, j, &compressed);
        row = (compressed ? p.comp_kv : p.kv) + index * D;
        grad = (compressed ? p.dcomp_kv : p.dkv) + index * D;
      }
      rows[buf + gt] = row;
      grad_rows[buf + gt] = grad;
    }
  };
  fill_tile(0);
  __syncthreads();  // lse, Δ and tile 0's rows
  if (p.dsink != nullptr && gt < heads) {
    atomicAdd(&p.dsink[h0 + gt], -expf(p.sink[h0 + gt] - mine.lse[gt]) * mine.delta[gt]);
  }
  TcStartGather<kPairThreads>(k_s, stride, rows, D, p.kv);
  CpAsyncWait<0>();
  __syncthreads();

  float dq[kTcMaxTiles][4];
#pragma unroll
  for (int n = 0; n < kTcMaxTiles; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

  for (int n = 0; n < num_tiles; ++n) {
    const int buf = (n % 2) * kTcKeys;
    // P and scale·dS of the warp's 16 keys for this group's query.
    {
      float s_tile[2][4], dp[2][4];
      TcWarpLogitsPair(mine.q, mine.dout, k_s + 16 * warp * stride, stride, D, s_tile, dp);
      TcWriteProbsAndDs(s_tile, dp, mine.weights + buf, heads, mine.lse, mine.delta, p.scale,
                        mine.ds_p);
    }
    const bool more = n + 1 < num_tiles;
    if (more) fill_tile(n + 1);  // the other buffers
    __syncthreads();
    // dQ += (scale·dS) · K over the tile's keys, the warp's output columns.
    TcProbsTimesKeys(mine.ds_p, kPStride, k_s, stride, D, dq);
    __syncthreads();  // every warp is done with the keys
    if (more) TcStartGather<kPairThreads>(k_s, stride, rows + (buf ^ kTcKeys), D, p.kv);
    // Both queries' key-row gradients while the next tile's keys arrive.
    {
      const int block_warp = static_cast<int>(threadIdx.x) / 32;
      const GroupSmem first = CarveGroup(group_base, stride);
      const GroupSmem second = CarveGroup(group_base + PairGroupBytes(D), stride);
      const uint16_t* const ds_p_of[kPairQueries] = {first.ds_p, second.ds_p};
      const uint16_t* const q_of[kPairQueries] = {first.q, second.q};
      const uint16_t* const dout_of[kPairQueries] = {first.dout, second.dout};
      const bool use[kPairQueries] = {b.active[0], b.active[1]};
      const int64_t half = D / 2, col_begin = (block_warp / kTcWarps) * half;
      TcAddKeyRowGrads<kPairQueries>(ds_p_of, q_of, dout_of, use, stride,
                                     16 * (block_warp % kTcWarps), col_begin, col_begin + half,
                                     grad_rows + buf, p.grads_vec4);
    }
    CpAsyncWait<0>();
    __syncthreads();  // the next tile's keys are in; dS|P and this tile's rows may be refilled
  }
  TcAddDq(dq, p.dq + (query * H + h0) * D, heads, D);
}

}  // namespace

absl::Status LaunchSparseAttentionBackwardPairTc(const SparseAttentionBackwardArgs& a) {
  const int64_t num_q = a.q.shape[0], heads = a.q.shape[1], D = a.q.shape[2];
  const SharedKeysBackwardParams p = SharedKeysBackwardParamsOf(a);
  const size_t shared = PairBackwardSharedBytes(D);
  if (cudaError_t e = cudaFuncSetAttribute(SparseAttentionBackwardPairTcKernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared));
      e != cudaSuccess) {
    return absl::InternalError(absl::StrFormat(
        "SparseAttentionBackward: %d bytes of shared memory: %s", shared, cudaGetErrorString(e)));
  }
  const dim3 grid(static_cast<unsigned>((num_q + kPairQueries - 1) / kPairQueries),
                  static_cast<unsigned>((heads + kTcHeads - 1) / kTcHeads));
  LaunchKernel(SparseAttentionBackwardPairTcKernel, grid, kPairThreads, shared, p);
  return LaunchStatus("SparseAttentionBackward (tensor cores, query pairs)");
}

}  // namespace v4rl::kernels::cuda
