#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/indexer.h"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kSelectThreads = 512;  // >= 256: the bin walk gives each bin a thread

// Monotone map of a score to uint32: a higher key ranks first; -0 equals +0; NaN lowest.
__device__ __forceinline__ uint32_t OrderKey(float f) {
  if (f != f) return 0u;
  if (f == 0.0f) f = 0.0f;
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive prefix sum over the block (blockDim.x = kSelectThreads); *total gets the sum.
// `scratch` holds kSelectThreads / 32 + 1 words of shared memory.
__device__ uint32_t BlockExclusiveScan(uint32_t v, uint32_t* total, uint32_t* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t inclusive = v;
  for (int offset = 1; offset < 32; offset *= 2) {
    const uint32_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t run = 0;
    for (int w = 0; w < kSelectThreads / 32; ++w) {
      const uint32_t t = scratch[w];
      scratch[w] = run;
      run += t;
    }
    scratch[kSelectThreads / 32] = run;
  }
  __syncthreads();
  *total = scratch[kSelectThreads / 32];
  return scratch[warp] + inclusive - v;
}

struct SelectParams {
  const float* scores;
  int32_t* topk_idx;
  int64_t num_keys, ld, topk, q_pos0, ratio;
  // Segmented selection: per row, segments · topk candidates (ids ascending, -1: none) with
  // their keys; the merge stages them in shared memory when they fit in merge_staged_bytes.
  int32_t* candidates;
  uint32_t* candidate_keys;
  int64_t merge_staged_bytes;
  int64_t segment_len;
  int segments;
};

constexpr int kPerThread = 8;  // consecutive scores a thread handles per tile
constexpr int64_t kTile = int64_t{kSelectThreads} * kPerThread;

// The keys a selection ranks, by position s in [0, size): a row's scores from `offset` on.
struct RowKeys {
  const float* row;
  int64_t offset, size;
  __device__ bool Valid(int64_t s) const { return s < size; }
  __device__ uint32_t Key(int64_t s) const { return OrderKey(row[offset + s]); }
  __device__ int32_t Id(int64_t s) const { return static_cast<int32_t>(offset + s); }
};

// Keys already in order-key form (staged in shared memory, or a merge's candidates), with their
// ids (-1: an empty slot, never counted) or ids offset + s when `ids` is null.
struct StagedKeys {
  const uint32_t* keys;
  const int32_t* ids;
  int64_t offset, size;
  __device__ bool Valid(int64_t s) const { return s < size && (ids == nullptr || ids[s] >= 0); }
  __device__ uint32_t Key(int64_t s) const { return keys[s]; }
  __device__ int32_t Id(int64_t s) const {
    return ids != nullptr ? ids[s] : static_cast<int32_t>(offset + s);
  }
};

// Rows of at most kStagedKeys scores are copied into shared memory once as order keys, so the
// five passes of SelectTopK read shared memory instead of global (latency-bound for one block).
constexpr int64_t kStagedKeys = 2 * kTile;
constexpr size_t kStagedBytes = kStagedKeys * sizeof(uint32_t);

__device__ __forceinline__ void StageRow(const float* row, int64_t n, uint32_t* staged) {
  for (int64_t start = 0; start < n; start += kTile) {
    const int64_t s = start + int64_t{threadIdx.x} * kPerThread;
    float v[kPerThread];
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) v[u] = s + u < n ? row[s + u] : 0.0f;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      if (s + u < n) staged[s + u] = OrderKey(v[u]);
    }
  }
  __syncthreads();
}

// Keys [s, s + kPerThread); invalid ones are 0 and flagged (never counted, never taken).
template <typename Keys>
__device__ __forceinline__ void TileKeys(const Keys& keys, int64_t s, uint32_t key[kPerThread],
                                         bool valid[kPerThread]) {
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    valid[u] = keys.Valid(s + u);
    key[u] = valid[u] ? keys.Key(s + u) : 0u;
  }
}

// The top `topk` of keys.size keys (more than topk of them valid) into out, ids ascending: radix
// select (4 passes of 8 bits) of the k-th key, then one ordered pass emitting every id above it
// plus the lowest ids equal to it. Each thread takes kPerThread consecutive keys of a tile of
// kTile, so every load batch keeps 8 loads in flight and the ordered pass needs one block scan per
// tile. Called by every thread of a kSelectThreads block; with out_keys, each pick's key is
// written beside its id.
template <typename Keys>
__device__ void SelectTopK(const Keys& keys, int64_t topk, int32_t* out,
                               uint32_t* out_keys = nullptr) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t scratch[kSelectThreads / 32 + 1];
  __shared__ uint32_t shared_prefix, shared_remaining;
  constexpr uint32_t kNoBin = 256;
  const int64_t n = keys.size;
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0, mask = 0, remaining = static_cast<uint32_t>(topk);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t start = 0; start < n; start += kTile) {
      const int64_t s = start + int64_t{threadIdx.x} * kPerThread;
      uint32_t key[kPerThread];
      bool valid[kPerThread];
      TileKeys(keys, s, key, valid);
      // Warp-aggregated: the leading bytes of nearby scores mostly agree, so one atomic per
      // distinct bin of the warp instead of up to 32 on one address.
#pragma unroll
      for (int u = 0; u < kPerThread; ++u) {
        const uint32_t bin =
            valid[u] && (key[u] & mask) == prefix ? (key[u] >> shift) & 0xFFu : kNoBin;
        const uint32_t peers = __match_any_sync(0xffffffffu, bin);
        if (bin != kNoBin && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
      }
    }
    __syncthreads();
    // The bin holding the remaining-th key from the top: thread j scans bin 255 - j, the exclusive
    // scan gives the keys in higher bins, and exactly one thread's bin covers the remaining picks
    // (instead of one thread walking the 256 bins serially).
    const uint32_t bin = 255 - threadIdx.x;
    const uint32_t count = threadIdx.x < 256 ? hist[bin] : 0u;
    uint32_t unused = 0;
    const uint32_t above = BlockExclusiveScan(count, &unused, scratch);
    if (threadIdx.x < 256 && above < remaining && above + count >= remaining) {
      shared_prefix = prefix | (bin << shift);
      shared_remaining = remaining - above;
    }
    __syncthreads();
    prefix = shared_prefix;
    remaining = shared_remaining;
    mask |= 0xFFu << shift;
  }
  // prefix is the k-th key; the `remaining` lowest ids equal to it are taken. Per tile one scan of
  // (above count, equal count) packed in 16 bits each (at most kTile = 4096 per tile).
  uint32_t emitted = 0, equal_seen = 0;
  for (int64_t start = 0; start < n; start += kTile) {
    const int64_t s = start + int64_t{threadIdx.x} * kPerThread;
    uint32_t key[kPerThread];
    bool valid[kPerThread];
    TileKeys(keys, s, key, valid);
    uint32_t above = 0, equal = 0;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      above += valid[u] && key[u] > prefix ? 1u : 0u;
      equal += valid[u] && key[u] == prefix ? 1u : 0u;
    }
    uint32_t total = 0;
    const uint32_t before = BlockExclusiveScan((equal << 16) | above, &total, scratch);
    const uint32_t above_before = before & 0xFFFFu, equal_before = equal_seen + (before >> 16);
    // Equal ids taken before this thread's: the first `remaining` equals of the row.
    auto taken = [&](uint32_t equals) { return equals < remaining ? equals : remaining; };
    uint32_t position = emitted + above_before + taken(equal_before) - taken(equal_seen);
    uint32_t equal_rank = equal_before;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      if (!valid[u]) continue;
      bool selected = key[u] > prefix;
      if (key[u] == prefix) selected = equal_rank++ < remaining;
      if (!selected) continue;
      if (out_keys != nullptr) out_keys[position] = key[u];
      out[position++] = keys.Id(s + u);
    }
    emitted += (total & 0xFFFFu) + taken(equal_seen + (total >> 16)) - taken(equal_seen);
    equal_seen += total >> 16;
  }
}

// Ids [begin, end) then -1 up to topk (a range of at most topk keys takes all of them).
__device__ __forceinline__ void TakeAll(int64_t begin, int64_t end, int64_t topk, int32_t* out) {
  for (int64_t s = threadIdx.x; s < topk; s += blockDim.x) {
    out[s] = begin + s < end ? static_cast<int32_t>(begin + s) : -1;
  }
}

__device__ __forceinline__ int64_t VisibleKeys(const SelectParams& p, int64_t i) {
  return Min64(plan::NumVisibleCompressed(p.q_pos0 + i, p.ratio), p.num_keys);
}

// One block per query over its whole row (staged in shared memory when it fits).
__global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectParams p) {
  extern __shared__ uint32_t staged[];
  const int64_t i = blockIdx.x;
  int32_t* out = p.topk_idx + i * p.topk;
  const int64_t n = VisibleKeys(p, i);
  if (n <= p.topk) return TakeAll(0, n, p.topk, out);
  const float* row = p.scores + i * p.ld;
  if (n > kStagedKeys) {
    SelectTopK(RowKeys{row, 0, n}, p.topk, out);
    return;
  }
  StageRow(row, n, staged);
  SelectTopK(StagedKeys{staged, nullptr, 0, n}, p.topk, out);
}

// Long rows of few queries (single-stream decode at long context: 250K keys at 1M tokens): block
// (query, segment) stages its segment of at most kStagedKeys scores and picks its top-k
// candidates (ids and keys); SelectMergeKernel then the query's top-k among them, staged in
// shared memory when they fit in kMergeStagedBytes. The row's top-k under (score descending, id
// ascending) lies within the segments'.
__global__ void __launch_bounds__(kSelectThreads) SelectSegmentKernel(SelectParams p) {
  extern __shared__ uint32_t staged[];
  const int64_t i = blockIdx.x, j = blockIdx.y;
  const int64_t slot = (i * p.segments + j) * p.topk;
  const int64_t n = VisibleKeys(p, i);
  const int64_t begin = Min64(n, j * p.segment_len), end = Min64(n, begin + p.segment_len);
  if (end - begin > p.topk) {
    StageRow(p.scores + i * p.ld + begin, end - begin, staged);
    SelectTopK(StagedKeys{staged, nullptr, begin, end - begin}, p.topk, p.candidates + slot,
               p.candidate_keys + slot);
    return;
  }
  TakeAll(begin, end, p.topk, p.candidates + slot);
  for (int64_t s = threadIdx.x; s < p.topk; s += blockDim.x) {
    p.candidate_keys[slot + s] = s < end - begin ? OrderKey(p.scores[i * p.ld + begin + s]) : 0u;
  }
}

// 8 bytes a candidate; 31 segments of 512 (1M tokens, top-512) take 127 KB. At most this much,
// and at most what the device allows a block (less the kernels' static shared memory).
constexpr int64_t kMergeStagedBytes = 200 * 1024;

__global__ void __launch_bounds__(kSelectThreads) SelectMergeKernel(SelectParams p) {
  extern __shared__ uint32_t staged[];
  const int64_t i = blockIdx.x;
  int32_t* out = p.topk_idx + i * p.topk;
  const int64_t n = VisibleKeys(p, i);
  if (n <= p.topk) return TakeAll(0, n, p.topk, out);
  const int64_t total = p.segments * p.topk;
  const int32_t* ids = p.candidates + i * total;
  const uint32_t* keys = p.candidate_keys + i * total;
  // Staged (keys, then ids) when they fit.
  if (total * 8 > p.merge_staged_bytes) {
    SelectTopK(StagedKeys{keys, ids, 0, total}, p.topk, out);
    return;
  }
  uint32_t* staged_keys = staged;
  auto* staged_ids = reinterpret_cast<int32_t*>(staged + total);
  for (int64_t s = threadIdx.x; s < total; s += blockDim.x) {
    staged_keys[s] = keys[s];
    staged_ids[s] = ids[s];
  }
  __syncthreads();
  SelectTopK(StagedKeys{staged_keys, staged_ids, 0, total}, p.topk, out);
}

struct ReduceParams {
  const float* logits;   // [chunk · heads, num_keys]
  const float* weights;  // [num_q, heads], rows of the chunk
  float* scores;         // [chunk, num_keys]
  int64_t chunk, heads, num_keys;
  float score_scale;
};

// scores[i, s] = Σ_h max(logit, 0) · score_scale · w[i, h], heads in order (as the CPU).
__global__ void ReduceHeadsKernel(ReduceParams p) {
  const int64_t total = p.chunk * p.num_keys;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e / p.num_keys, s = e % p.num_keys;
    float sum = 0.0f;
    for (int64_t h = 0; h < p.heads; ++h) {
      sum += fmaxf(p.logits[(i * p.heads + h) * p.num_keys + s], 0.0f) * p.score_scale *
             p.weights[i * p.heads + h];
    }
    p.scores[e] = sum;
  }
}

absl::Status LaunchSelect(const float* scores, int64_t ld, int64_t rows, int64_t num_keys,
                          int64_t q_pos0, int64_t ratio, int32_t* topk_idx, int64_t topk) {
  if (rows == 0 || topk == 0) return absl::OkStatus();
  SelectParams p{scores, topk_idx, num_keys, ld, topk, q_pos0, ratio};
  static const int64_t merge_staged_bytes = [] {
    int device = 0, optin = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    return std::max<int64_t>(0, std::min<int64_t>(kMergeStagedBytes, optin - 8 * 1024));
  }();
  p.merge_staged_bytes = merge_staged_bytes;
  static const cudaError_t attributes[] = {
      cudaFuncSetAttribute(SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kStagedBytes)),
      cudaFuncSetAttribute(SelectSegmentKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kStagedBytes)),
      cudaFuncSetAttribute(SelectMergeKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(merge_staged_bytes))};
  for (cudaError_t attribute : attributes) {
    if (attribute != cudaSuccess) {
      return absl::InternalError(absl::StrFormat("cuda::IndexerSelect: shared memory: %s",
                                                 cudaGetErrorString(attribute)));
    }
  }
  // Few long rows: segments of at most kStagedKeys keys (evened out) on their own blocks, then a
  // merge.
  constexpr int64_t kMaxSegmentedRows = 16;
  if (rows <= kMaxSegmentedRows && num_keys > 2 * kStagedKeys && topk <= kStagedKeys / 4) {
    p.segments =
        static_cast<int>(std::min<int64_t>((num_keys + kStagedKeys - 1) / kStagedKeys, 65535));
    p.segment_len = (num_keys + p.segments - 1) / p.segments;
    // Candidates and their keys from the stream-ordered cache (free again once both launches
    // are queued).
    const int64_t per_row = p.segments * topk;
    const core::Tensor scratch = core::Tensor::Empty(core::DType::kI32, {rows * 2 * per_row},
                                                     CachingDeviceAllocator());
    p.candidates = scratch.data<int32_t>();
    p.candidate_keys = reinterpret_cast<uint32_t*>(p.candidates + rows * per_row);
    const size_t merge_bytes = per_row * 8 <= merge_staged_bytes ? per_row * 8 : 0;
    SelectSegmentKernel<<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(p.segments)),
                          kSelectThreads, kStagedBytes, LaunchStream()>>>(p);
    SelectMergeKernel<<<static_cast<unsigned>(rows), kSelectThreads, merge_bytes, LaunchStream()>>>(
        p);
    return LaunchStatus("cuda::IndexerSelect");
  }
  SelectKernel<<<static_cast<unsigned>(rows), kSelectThreads, kStagedBytes, LaunchStream()>>>(p);
  return LaunchStatus("cuda::IndexerSelect");
}

}  // namespace

int64_t IndexerTopKWorkspaceFloats(int64_t q_chunk, int64_t heads, int64_t num_keys) {
  return q_chunk * heads * num_keys + q_chunk * num_keys;
}

absl::Status IndexerSelect(const core::TensorView& scores, int64_t q_pos0, int64_t ratio,
                           const core::TensorView& topk_idx) {
  const char* op = "cuda::IndexerSelect";
  if (absl::Status s = CheckDeviceView(op, "scores", scores, {core::DType::kF32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckDeviceView(op, "topk_idx", topk_idx, {core::DType::kI32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckArg(scores.rank == 2 && topk_idx.rank == 2 &&
                                    topk_idx.shape[0] == scores.shape[0] && ratio > 0,
                                op, "scores [num_q, num_keys], topk_idx [num_q, k], ratio > 0");
      !s.ok()) {
    return s;
  }
  return LaunchSelect(scores.data_as<float>(), scores.shape[1], scores.shape[0], scores.shape[1],
                      q_pos0, ratio, topk_idx.data_as<int32_t>(), topk_idx.shape[1]);
}

absl::Status IndexerTopK(GemmHandle& handle, const IndexerTopKArgs& a) {
  const char* op = "cuda::IndexerTopK";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "q", a.q, {DType::kBF16}),
                         CheckDeviceView(op, "keys", a.keys, {DType::kBF16}),
                         CheckDeviceView(op, "weights", a.weights, {DType::kF32}),
                         CheckDeviceView(op, "topk_idx", a.topk_idx, {DType::kI32}),
                         CheckDeviceView(op, "workspace", a.workspace, {DType::kF32})}) {
    if (!s.ok()) return s;
  }
  if (absl::Status s = CheckArg(a.q.rank == 3 && a.keys.rank == 2 && a.keys.shape[1] == a.q.shape[2] &&
                                    a.topk_idx.rank == 2 && a.topk_idx.shape[0] == a.q.shape[0] &&
                                    a.ratio > 0 && a.q_chunk > 0,
                                op, "q [num_q, heads, D], keys [num_keys, D], topk_idx [num_q, k], "
                                    "ratio > 0, q_chunk > 0");
      !s.ok()) {
    return s;
  }
  const int64_t num_q = a.q.shape[0], heads = a.q.shape[1], head_dim = a.q.shape[2];
  const int64_t num_keys = a.keys.shape[0];
  if (absl::Status s = CheckViewShape(op, "weights", a.weights, {num_q, heads}); !s.ok()) return s;
  const int64_t chunk = std::min(a.q_chunk, std::max<int64_t>(num_q, 1));
  if (absl::Status s = CheckArg(a.workspace.numel() >= IndexerTopKWorkspaceFloats(chunk, heads, num_keys),
                                op, "workspace smaller than IndexerTopKWorkspaceFloats");
      !s.ok()) {
    return s;
  }
  if (num_q == 0) return absl::OkStatus();
  float* logits = a.workspace.data_as<float>();
  float* scores = logits + chunk * heads * num_keys;
  if (num_keys == 0) {  // nothing visible: every row is -1 padding
    return LaunchSelect(logits, 0, num_q, 0, a.q_pos0, a.ratio, a.topk_idx.data_as<int32_t>(),
                        a.topk_idx.shape[1]);
  }
  const core::TensorView q_rows = a.q.Reshape({num_q * heads, head_dim});
  for (int64_t c0 = 0; c0 < num_q; c0 += chunk) {
    const int64_t rows = std::min(chunk, num_q - c0);
    const core::TensorView logits_view = core::TensorView::Contiguous(
        logits, DType::kF32, {rows * heads, num_keys}, core::Device::kCuda);
    if (absl::Status s = Gemm(handle, q_rows.Slice(0, c0 * heads, (c0 + rows) * heads), a.keys,
                              logits_view);
        !s.ok()) {
      return s;
    }
    ReduceParams r{logits, a.weights.data_as<float>() + c0 * heads, scores, rows, heads, num_keys,
                   a.score_scale};
    const int64_t total = rows * num_keys;
    ReduceHeadsKernel<<<static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 1 << 16)), 256,
                        0, LaunchStream()>>>(r);
    if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
    if (absl::Status s = LaunchSelect(scores, num_keys, rows, num_keys, a.q_pos0 + c0, a.ratio,
                                      a.topk_idx.data_as<int32_t>() + c0 * a.topk_idx.shape[1],
                                      a.topk_idx.shape[1]);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
