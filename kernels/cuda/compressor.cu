#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/compressor_pool.cuh"

namespace v4rl::kernels::cuda {
namespace {

struct PoolParams {
  const void* kv;
  const void* score;
  void* out;
  int64_t num_windows, ratio, head_dim, first_entry;
  bool overlap, kv_bf16, score_bf16, out_bf16;
};

// Slot s of entry w: series A rows of window w - 1 (overlap, w >= 1) first, then window w.
__device__ __forceinline__ int64_t SlotOffset(const PoolParams& p, int64_t w, int64_t s,
                                              int64_t d) {
  const int64_t width = (p.overlap ? 2 : 1) * p.head_dim;
  const bool has_a = p.overlap && w >= 1;
  if (has_a && s < p.ratio) return ((w - 1) * p.ratio + s) * width + d;
  const int64_t j = has_a ? s - p.ratio : s;
  return (w * p.ratio + j) * width + (p.overlap ? p.head_dim : 0) + d;
}

__global__ void CompressPoolKernel(PoolParams p) {
  WaitForPriorKernels();
  const int64_t entries = p.num_windows - p.first_entry;
  const int64_t total = entries * p.head_dim;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t w = p.first_entry + e / p.head_dim, d = e % p.head_dim;
    const int64_t num_slots = (p.overlap && w >= 1 ? 2 : 1) * p.ratio;
    const float pooled = PoolChannel(p.kv, p.kv_bf16, p.score, p.score_bf16, num_slots,
                                     [&](int64_t s) { return SlotOffset(p, w, s, d); });
    StoreF(p.out, p.out_bf16, e, pooled);
  }
}

constexpr int kPoolBatch = 512;

struct PoolEntriesParams {
  const void* kv;
  const void* score;
  void* out;  // the chunk's first output row
  int64_t count, ratio, head_dim;
  bool overlap, kv_bf16, score_bf16, out_bf16;
  int32_t code[kPoolBatch];  // window · 2 + with_previous
};

__global__ void CompressPoolEntriesKernel(PoolEntriesParams p) {
  WaitForPriorKernels();
  const int64_t total = p.count * p.head_dim;
  const int64_t width = (p.overlap ? 2 : 1) * p.head_dim;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e / p.head_dim, d = e % p.head_dim;
    const int64_t w = p.code[i] / 2;
    const bool has_a = p.overlap && (p.code[i] & 1) != 0;
    const int64_t num_slots = (has_a ? 2 : 1) * p.ratio;
    auto offset = [&](int64_t s) -> int64_t {  // SlotOffset's order
      if (has_a && s < p.ratio) return ((w - 1) * p.ratio + s) * width + d;
      const int64_t j = has_a ? s - p.ratio : s;
      return (w * p.ratio + j) * width + (p.overlap ? p.head_dim : 0) + d;
    };
    StoreF(p.out, p.out_bf16, e,
           PoolChannel(p.kv, p.kv_bf16, p.score, p.score_bf16, num_slots, offset));
  }
}

}  // namespace

absl::Status CompressPoolEntries(const core::TensorView& kv, const core::TensorView& score,
                                 int64_t ratio, bool overlap, absl::Span<const PoolEntry> entries,
                                 const core::TensorView& out) {
  const char* op = "cuda::CompressPoolEntries";
  using core::DType;
  for (const auto& [name, v] : {std::pair{"kv", &kv}, std::pair{"score", &score},
                                std::pair{"out", &out}}) {
    if (absl::Status s = CheckDeviceView(op, name, *v, {DType::kBF16, DType::kF32}); !s.ok()) {
      return s;
    }
  }
  for (absl::Status s :
       {CheckArg(kv.rank == 2 && score.SameShape(kv.shape_vector()), op,
                 "kv and score must be equal-shaped [rows, width]"),
        CheckArg(ratio > 0 && kv.rank == 2 && kv.shape[0] % ratio == 0, op,
                 "rows must be whole windows of ratio"),
        CheckArg(!overlap || (kv.rank == 2 && kv.shape[1] % 2 == 0), op,
                 "overlap needs an even width")}) {
    if (!s.ok()) return s;
  }
  const int64_t head_dim = overlap ? kv.shape[1] / 2 : kv.shape[1];
  const int64_t num_windows = kv.shape[0] / ratio;
  const int64_t count = static_cast<int64_t>(entries.size());
  if (absl::Status s = CheckViewShape(op, "out", out, {count, head_dim}); !s.ok()) return s;
  for (const PoolEntry& entry : entries) {
    if (entry.window < 0 || entry.window >= num_windows || (entry.with_previous && entry.window < 1)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: entry window %d (previous %d) outside the %d windows", op, entry.window,
          int(entry.with_previous), num_windows));
    }
  }
  const int64_t row_bytes = head_dim * (IsBf16(out) ? 2 : 4);
  for (int64_t begin = 0; begin < count; begin += kPoolBatch) {
    PoolEntriesParams p{};
    p.kv = kv.data;
    p.score = score.data;
    p.out = static_cast<char*>(out.data) + begin * row_bytes;
    p.count = std::min<int64_t>(kPoolBatch, count - begin);
    p.ratio = ratio;
    p.head_dim = head_dim;
    p.overlap = overlap;
    p.kv_bf16 = IsBf16(kv);
    p.score_bf16 = IsBf16(score);
    p.out_bf16 = IsBf16(out);
    for (int64_t i = 0; i < p.count; ++i) {
      const PoolEntry& entry = entries[begin + i];
      p.code[i] = entry.window * 2 + (entry.with_previous ? 1 : 0);
    }
    const int64_t total = p.count * head_dim;
    if (total == 0) continue;
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, int64_t{1} << 16));
    LaunchKernel(CompressPoolEntriesKernel, blocks, 256, 0, p);
    if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CompressPool(const core::TensorView& kv, const core::TensorView& score,
                          int64_t ratio, bool overlap, int64_t first_entry,
                          const core::TensorView& out) {
  const char* op = "cuda::CompressPool";
  using core::DType;
  for (const auto& [name, v] : {std::pair{"kv", &kv}, std::pair{"score", &score},
                                std::pair{"out", &out}}) {
    if (absl::Status s = CheckDeviceView(op, name, *v, {DType::kBF16, DType::kF32}); !s.ok()) {
      return s;
    }
  }
  for (absl::Status s :
       {CheckArg(kv.rank == 2 && score.SameShape(kv.shape_vector()), op,
                 "kv and score must be equal-shaped [rows, width]"),
        CheckArg(ratio > 0 && kv.rank == 2 && kv.shape[0] % ratio == 0, op,
                 "rows must be whole windows of ratio"),
        CheckArg(!overlap || (kv.rank == 2 && kv.shape[1] % 2 == 0), op,
                 "overlap needs an even width")}) {
    if (!s.ok()) return s;
  }
  const int64_t head_dim = overlap ? kv.shape[1] / 2 : kv.shape[1];
  const int64_t num_windows = kv.shape[0] / ratio;
  if (absl::Status s = CheckArg(first_entry >= 0 && first_entry <= num_windows, op,
                                "first_entry outside [0, num_windows]");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckViewShape(op, "out", out, {num_windows - first_entry, head_dim});
      !s.ok()) {
    return s;
  }
  PoolParams p{kv.data, score.data, out.data, num_windows, ratio, head_dim, first_entry,
               overlap, IsBf16(kv), IsBf16(score), IsBf16(out)};
  const int64_t total = (num_windows - first_entry) * head_dim;
  if (total == 0) return absl::OkStatus();
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, int64_t{1} << 16));
  LaunchKernel(CompressPoolKernel, blocks, 256, 0, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
