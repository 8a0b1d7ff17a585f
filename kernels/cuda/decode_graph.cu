// decode_graph.h's kernels: one block (or thread) per row of the step, reading the row's position
// and its sequence's state pointers from the device tables, so that launch parameters hold only
// what stays fixed between replays (base pointers, sizes).
#include <cstdint>
#include <initializer_list>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/compressor_pool.cuh"
#include "kernels/cuda/decode_graph.h"
#include "kernels/cuda/rope_table.cuh"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;

// The first error of `checks` (all evaluated; ones past a wrong rank read zero-filled shapes).
absl::Status FirstError(std::initializer_list<absl::Status> checks) {
  for (const absl::Status& s : checks) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// The block's threads copy `bytes` bytes: 16 a step when both ends and the length allow it (state
// rows and arena rows do), else one.
__device__ __forceinline__ void BlockCopy(void* dst, const void* src, int64_t bytes) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                         static_cast<uintptr_t>(bytes);
  if ((bits & 15) == 0) {
    const uint4* s = static_cast<const uint4*>(src);
    uint4* d = static_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x) d[i] = s[i];
  } else {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = static_cast<uint8_t*>(dst);
    for (int64_t i = threadIdx.x; i < bytes; i += blockDim.x) d[i] = s[i];
  }
}

constexpr int kAppendThreads = 256;
constexpr int kCopyThreads = 64;  // a 512-wide bf16 row is 64 pieces of 16 bytes
constexpr int kItemThreads = 128;

struct AppendParams {
  const DecodeRowState* table;
  const int32_t* positions;
  const __nv_bfloat16* kv;   // [rows, width]
  const float* score;        // [rows, width]
  __nv_bfloat16* out;        // [rows, dim]
  int32_t* entry_positions;  // [rows], or null
  const float* inv_freq;     // [half], or null (with cos, sin): no RoPE rows
  float* cos;                // [rows, half]
  float* sin;                // [rows, half]
  int64_t ratio, dim, half;
  bool indexer, overlap;
};

// Block b: the new row into its slot, then (window complete) the entry pooled from the state's
// rows with CompressPoolEntriesKernel's slot order and arithmetic (compressor_pool.cuh): slots
// [0, m) the previous window's series A (state rows [0, m), channels [0, dim)) when there is one,
// then the open window's series B (state rows [open, open + m), channels [dim, 2·dim) with
// overlap). The open window then becomes the previous one. The entry's RoPE rows (every row) come
// first: they depend on the position only.
__global__ void DecodeCompressAppendKernel(AppendParams p) {
  WaitForPriorKernels();
  const int64_t b = blockIdx.x;
  const int64_t m = p.ratio, dim = p.dim, width = (p.overlap ? 2 : 1) * dim;
  const int64_t position = p.positions[b];
  const DecodeRowState& row = p.table[b];
  auto* state_kv = static_cast<__nv_bfloat16*>(p.indexer ? row.index_kv : row.comp_kv);
  auto* state_score = static_cast<float*>(p.indexer ? row.index_score : row.comp_score);
  const int64_t open = p.overlap ? m : 0;  // the open window's first state row
  const int64_t slot = open + position % m;
  BlockCopy(state_kv + slot * width, p.kv + b * width, width * 2);
  BlockCopy(state_score + slot * width, p.score + b * width, width * 4);
  const int64_t entry_position = position / m * m;
  if (p.entry_positions != nullptr && threadIdx.x == 0) {
    p.entry_positions[b] = static_cast<int32_t>(entry_position);
  }
  if (p.cos != nullptr) {
    for (int64_t i = threadIdx.x; i < p.half; i += blockDim.x) {
      const float2 cos_sin = RopeCosSin(entry_position, p.inv_freq[i]);
      p.cos[b * p.half + i] = cos_sin.x;
      p.sin[b * p.half + i] = cos_sin.y;
    }
  }
  __nv_bfloat16* out = p.out + b * dim;
  if ((position + 1) % m != 0) {  // the window stays open: no entry (block-uniform branch)
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) out[d] = __float2bfloat16(0.0f);
    return;
  }
  __syncthreads();  // the new row is in the state
  const bool has_a = p.overlap && position / m >= 1;
  const int64_t b_column = p.overlap ? dim : 0;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    auto offset = [&](int64_t s) -> int64_t {
      if (has_a && s < m) return s * width + d;
      return (open + (has_a ? s - m : s)) * width + b_column + d;
    };
    StoreF(out, /*bf16=*/true, d,
           PoolChannel(state_kv, /*kv_bf16=*/true, state_score, /*score_bf16=*/false,
                       (has_a ? 2 : 1) * m, offset));
  }
  if (!p.overlap) return;
  __syncthreads();  // every slot read before the previous-window rows are overwritten
  BlockCopy(state_kv, state_kv + m * width, m * width * 2);
  BlockCopy(state_score, state_score + m * width, m * width * 4);
}

struct CommitParams {
  const DecodeRowState* table;
  const int32_t* positions;
  const __nv_bfloat16* entries;  // [rows, dim]
  int64_t ratio, dim;
  bool indexer;
};

__global__ void __launch_bounds__(kCopyThreads) DecodeCompressCommitKernel(CommitParams p) {
  WaitForPriorKernels();
  const int64_t b = blockIdx.x;
  const int64_t position = p.positions[b];
  if ((position + 1) % p.ratio != 0) return;
  const DecodeRowState& row = p.table[b];
  auto* keys = static_cast<__nv_bfloat16*>(p.indexer ? row.index_keys : row.entries);
  BlockCopy(keys + position / p.ratio * p.dim, p.entries + b * p.dim, p.dim * 2);
}

struct AttentionItemParams {
  const DecodeRowState* table;
  const int32_t* positions;
  const __nv_bfloat16* q;        // [rows, heads, dim]
  const __nv_bfloat16* kv_rows;  // [rows, dim]
  __nv_bfloat16* out;            // [rows, heads, dim]
  const int32_t* picks;          // [rows, topk] or null
  DecodeAttentionItem* items;    // [rows]
  int64_t heads, dim, window, ratio, topk;
};

// Block b: row b's K=V row into its ring slot (all threads), and its item (thread 0). The ring
// write may precede the attention: DecodeAttentionKernel reads slots of positions p - cached ..
// p - 1 (cached <= window - 1), never p's own slot, and takes row b itself from own_kv.
__global__ void __launch_bounds__(kCopyThreads)
    DecodeRingWriteAndAttentionItemsKernel(AttentionItemParams p) {
  WaitForPriorKernels();
  const int64_t b = blockIdx.x;
  const int64_t position = p.positions[b];
  const DecodeRowState& row = p.table[b];
  auto* ring = static_cast<__nv_bfloat16*>(row.ring);
  BlockCopy(ring + position % p.window * p.dim, p.kv_rows + b * p.dim, p.dim * 2);
  if (threadIdx.x != 0) return;
  DecodeAttentionItem item;
  item.q = p.q + b * p.heads * p.dim;
  item.ring = ring;
  item.own_kv = p.kv_rows + b * p.dim;
  item.out = p.out + b * p.heads * p.dim;
  item.position = position;
  const int64_t entries = p.ratio > 0 ? (position + 1) / p.ratio : 0;
  if (entries > 0) {  // no complete window yet: no compressed keys at all
    item.comp = row.entries;
    item.num_comp = entries;
    if (p.picks != nullptr) {
      item.comp_idx = p.picks + b * p.topk;
      item.comp_topk = p.topk;
    }
  }
  p.items[b] = item;
}

struct IndexerItemParams {
  const DecodeRowState* table;
  const int32_t* positions;
  const __nv_bfloat16* q;    // [rows, heads, dim]
  const float* weights;      // [rows, heads]
  float* scores;             // [rows, ld]
  DecodeIndexerItem* items;  // [rows]
  int64_t rows, heads, dim, ld, ratio;
};

__global__ void __launch_bounds__(kItemThreads) BuildDecodeIndexerItemsKernel(IndexerItemParams p) {
  WaitForPriorKernels();
  const int64_t b = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (b >= p.rows) return;
  DecodeIndexerItem item;
  item.q = p.q + b * p.heads * p.dim;
  item.weights = p.weights + b * p.heads;
  item.keys = p.table[b].index_keys;
  item.scores = p.scores + b * p.ld;
  item.num_keys = (p.positions[b] + 1) / p.ratio;
  p.items[b] = item;
}

// positions must be an i32 [rows] device view; sets *rows.
absl::Status CheckPositions(const char* op, const DecodeRowState* table,
                            const core::TensorView& positions, int64_t* rows) {
  if (absl::Status s = CheckArg(table != nullptr, op, "table must not be null"); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "positions", positions, {DType::kI32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckArg(positions.rank == 1, op, "positions must be [rows]"); !s.ok()) {
    return s;
  }
  *rows = positions.shape[0];
  return absl::OkStatus();
}

unsigned ItemBlocks(int64_t rows) {
  return static_cast<unsigned>((rows + kItemThreads - 1) / kItemThreads);
}

}  // namespace

absl::Status DecodeCompressAppend(const DecodeRowState* table, bool indexer,
                                  const core::TensorView& positions, const core::TensorView& kv,
                                  const core::TensorView& score, int64_t ratio, bool overlap,
                                  const core::TensorView& out,
                                  const core::TensorView& entry_positions) {
  return DecodeCompressAppend(table, indexer, positions, kv, score, ratio, overlap, out,
                              entry_positions, core::TensorView(), core::TensorView(),
                              core::TensorView());
}

absl::Status DecodeCompressAppend(const DecodeRowState* table, bool indexer,
                                  const core::TensorView& positions, const core::TensorView& kv,
                                  const core::TensorView& score, int64_t ratio, bool overlap,
                                  const core::TensorView& out,
                                  const core::TensorView& entry_positions,
                                  const core::TensorView& inv_freq, const core::TensorView& cos,
                                  const core::TensorView& sin) {
  const char* op = "cuda::DecodeCompressAppend";
  int64_t rows = 0;
  if (absl::Status s = CheckPositions(op, table, positions, &rows); !s.ok()) return s;
  const bool with_positions = entry_positions.data != nullptr;
  // The overload without RoPE rows passes three undefined views; any one given asks for them.
  const bool with_rope = inv_freq.data != nullptr || cos.data != nullptr || sin.data != nullptr;
  if (absl::Status s = FirstError({
          CheckDeviceView(op, "kv", kv, {DType::kBF16}),
          CheckDeviceView(op, "score", score, {DType::kF32}),
          CheckDeviceView(op, "out", out, {DType::kBF16}),
          with_positions ? CheckDeviceView(op, "entry_positions", entry_positions, {DType::kI32})
                         : absl::OkStatus(),
          with_rope ? CheckDeviceView(op, "inv_freq", inv_freq, {DType::kF32}) : absl::OkStatus(),
          with_rope ? CheckDeviceView(op, "cos", cos, {DType::kF32}) : absl::OkStatus(),
          with_rope ? CheckDeviceView(op, "sin", sin, {DType::kF32}) : absl::OkStatus(),
          CheckArg(!with_rope || inv_freq.rank == 1, op, "inv_freq must be [rope_dim / 2]"),
          CheckArg(ratio > 0, op, "ratio must be positive"),
          CheckArg(kv.rank == 2 && kv.shape[0] == rows, op, "kv must be [rows, width]"),
          CheckArg(!overlap || kv.shape[1] % 2 == 0, op, "overlap needs an even width"),
      });
      !s.ok()) {
    return s;
  }
  const int64_t width = kv.shape[1], dim = overlap ? width / 2 : width;
  const int64_t half = with_rope ? inv_freq.shape[0] : 0;
  if (absl::Status s = FirstError({
          CheckViewShape(op, "score", score, {rows, width}),
          CheckViewShape(op, "out", out, {rows, dim}),
          with_positions ? CheckViewShape(op, "entry_positions", entry_positions, {rows})
                         : absl::OkStatus(),
          with_rope ? CheckViewShape(op, "cos", cos, {rows, half}) : absl::OkStatus(),
          with_rope ? CheckViewShape(op, "sin", sin, {rows, half}) : absl::OkStatus(),
      });
      !s.ok()) {
    return s;
  }
  if (rows == 0) return absl::OkStatus();
  const AppendParams p{table,
                       positions.data_as<const int32_t>(),
                       kv.data_as<const __nv_bfloat16>(),
                       score.data_as<const float>(),
                       out.data_as<__nv_bfloat16>(),
                       with_positions ? entry_positions.data_as<int32_t>() : nullptr,
                       with_rope ? inv_freq.data_as<const float>() : nullptr,
                       with_rope ? cos.data_as<float>() : nullptr,
                       with_rope ? sin.data_as<float>() : nullptr,
                       ratio,
                       dim,
                       half,
                       indexer,
                       overlap};
  LaunchKernel(DecodeCompressAppendKernel, static_cast<unsigned>(rows), kAppendThreads, 0, p);
  return LaunchStatus(op);
}

absl::Status DecodeCompressCommit(const DecodeRowState* table, bool indexer,
                                  const core::TensorView& positions,
                                  const core::TensorView& entries, int64_t ratio) {
  const char* op = "cuda::DecodeCompressCommit";
  int64_t rows = 0;
  if (absl::Status s = CheckPositions(op, table, positions, &rows); !s.ok()) return s;
  if (absl::Status s = FirstError({
          CheckDeviceView(op, "entries", entries, {DType::kBF16}),
          CheckArg(entries.rank == 2 && entries.shape[0] == rows, op,
                   "entries must be [rows, dim]"),
          CheckArg(ratio > 0, op, "ratio must be positive"),
      });
      !s.ok()) {
    return s;
  }
  if (rows == 0) return absl::OkStatus();
  const CommitParams p{table,
                       positions.data_as<const int32_t>(),
                       entries.data_as<const __nv_bfloat16>(),
                       ratio,
                       entries.shape[1],
                       indexer};
  LaunchKernel(DecodeCompressCommitKernel, static_cast<unsigned>(rows), kCopyThreads, 0, p);
  return LaunchStatus(op);
}

absl::Status DecodeRingWriteAndAttentionItems(
    const DecodeRowState* table, const core::TensorView& positions, const core::TensorView& q,
    const core::TensorView& kv_rows, const core::TensorView& out, int64_t window, int64_t ratio,
    const core::TensorView& picks, DecodeAttentionItem* items) {
  const char* op = "cuda::DecodeRingWriteAndAttentionItems";
  int64_t rows = 0;
  if (absl::Status s = CheckPositions(op, table, positions, &rows); !s.ok()) return s;
  const bool with_picks = picks.data != nullptr;
  if (absl::Status s = FirstError({
          CheckArg(items != nullptr, op, "items must not be null"),
          CheckDeviceView(op, "q", q, {DType::kBF16}),
          CheckDeviceView(op, "kv_rows", kv_rows, {DType::kBF16}),
          CheckDeviceView(op, "out", out, {DType::kBF16}),
          CheckArg(q.rank == 3 && q.shape[0] == rows, op, "q must be [rows, heads, D]"),
          CheckArg(Vec8Ok(q.data, q.shape[1] * q.shape[2]) && Vec8Ok(kv_rows.data, q.shape[2]), op,
                   "q and kv_rows rows must be 16-byte aligned (read 16 bytes at a time)"),
          CheckArg(window > 0, op, "window must be positive"),
          CheckArg(ratio >= 0, op, "ratio must be non-negative (0: sliding window)"),
          with_picks ? CheckDeviceView(op, "picks", picks, {DType::kI32}) : absl::OkStatus(),
          CheckArg(!with_picks || (picks.rank == 2 && picks.shape[0] == rows), op,
                   "picks must be [rows, k] or undefined"),
      });
      !s.ok()) {
    return s;
  }
  const int64_t heads = q.shape[1], dim = q.shape[2];
  if (absl::Status s = FirstError({
          CheckViewShape(op, "kv_rows", kv_rows, {rows, dim}),
          CheckViewShape(op, "out", out, {rows, heads, dim}),
      });
      !s.ok()) {
    return s;
  }
  if (rows == 0) return absl::OkStatus();
  const AttentionItemParams p{table,
                              positions.data_as<const int32_t>(),
                              q.data_as<const __nv_bfloat16>(),
                              kv_rows.data_as<const __nv_bfloat16>(),
                              out.data_as<__nv_bfloat16>(),
                              with_picks ? picks.data_as<const int32_t>() : nullptr,
                              items,
                              heads,
                              dim,
                              window,
                              ratio,
                              with_picks ? picks.shape[1] : 0};
  LaunchKernel(DecodeRingWriteAndAttentionItemsKernel, static_cast<unsigned>(rows), kCopyThreads, 0,
               p);
  return LaunchStatus(op);
}

absl::Status BuildDecodeIndexerItems(const DecodeRowState* table, const core::TensorView& positions,
                                     const core::TensorView& q, const core::TensorView& weights,
                                     const core::TensorView& scores, int64_t ratio,
                                     DecodeIndexerItem* items) {
  const char* op = "cuda::BuildDecodeIndexerItems";
  int64_t rows = 0;
  if (absl::Status s = CheckPositions(op, table, positions, &rows); !s.ok()) return s;
  if (absl::Status s = FirstError({
          CheckArg(items != nullptr, op, "items must not be null"),
          CheckDeviceView(op, "q", q, {DType::kBF16}),
          CheckDeviceView(op, "weights", weights, {DType::kF32}),
          CheckDeviceView(op, "scores", scores, {DType::kF32}),
          CheckArg(q.rank == 3 && q.shape[0] == rows, op, "q must be [rows, heads, di]"),
          CheckArg(Vec8Ok(q.data, q.shape[1] * q.shape[2]), op,
                   "q rows must be 16-byte aligned (read 16 bytes at a time)"),
          CheckArg(scores.rank == 2 && scores.shape[0] == rows, op, "scores must be [rows, ld]"),
          CheckArg(ratio > 0, op, "ratio must be positive"),
      });
      !s.ok()) {
    return s;
  }
  const int64_t heads = q.shape[1];
  if (absl::Status s = CheckViewShape(op, "weights", weights, {rows, heads}); !s.ok()) return s;
  if (rows == 0) return absl::OkStatus();
  const IndexerItemParams p{table,
                            positions.data_as<const int32_t>(),
                            q.data_as<const __nv_bfloat16>(),
                            weights.data_as<const float>(),
                            scores.data_as<float>(),
                            items,
                            rows,
                            heads,
                            q.shape[2],
                            scores.shape[1],
                            ratio};
  LaunchKernel(BuildDecodeIndexerItemsKernel, ItemBlocks(rows), kItemThreads, 0, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
