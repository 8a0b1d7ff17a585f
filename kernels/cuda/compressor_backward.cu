#include "kernels/cuda/common.cuh"
#include "kernels/cuda/compressor_backward.h"

namespace v4rl::kernels::cuda {
namespace {

struct Params {
  const void* kv;
  const void* score;
  const void* dout;
  float* dkv;
  float* dscore;
  bool kv_bf16, score_bf16, dout_bf16, overlap;
  int64_t num_windows, ratio, head_dim, width, first_entry;
};

__device__ __forceinline__ int64_t SlotOffset(const Params& p, int64_t w, int64_t s) {
  // Series A of window w - 1 (overlap, w >= 1) first, then this window's own slots.
  const bool has_prev = p.overlap && w >= 1;
  if (has_prev && s < p.ratio) return ((w - 1) * p.ratio + s) * p.width;
  const int64_t j = has_prev ? s - p.ratio : s;
  return (w * p.ratio + j) * p.width + (p.overlap ? p.head_dim : 0);
}

constexpr int kThreads = 256;
constexpr int kMaxGroups = 8;

// Slot groups a block uses: one where an entry has few slots (the CSA's 8: each thread walks its
// channel's slots in order), up to eight for long windows (the HCA's 128: 16 slots a thread),
// so that a block covers kThreads / groups channels.
int SlotGroups(int64_t max_slots) {
  int groups = 1;
  while (groups < kMaxGroups && max_slots / (groups * 2) >= 16) groups *= 2;
  return groups;
}

// Block (entry, channel chunk): thread x of group y (y = threadIdx.x / (kThreads / groups)) takes
// channel chunk·(kThreads / groups) + x and slots y, y + groups, ...; the groups' partial max,
// exponential sum and weighted sum meet in shared memory, added in group order.
__global__ void __launch_bounds__(kThreads) CompressPoolBackwardKernel(Params p, int groups) {
  WaitForPriorKernels();
  __shared__ float part_max[kThreads], part_denom[kThreads], part_weighted[kThreads];
  const int channels = kThreads / groups;
  const int chunks = static_cast<int>((p.head_dim + channels - 1) / channels);
  const int x = static_cast<int>(threadIdx.x) % channels,
            y = static_cast<int>(threadIdx.x) / channels;
  const int64_t w = p.first_entry + blockIdx.x / chunks;
  const int64_t d = int64_t{blockIdx.x % chunks} * channels + x;
  const bool real = d < p.head_dim;
  const int64_t slots = (p.overlap && w >= 1 ? 2 : 1) * p.ratio;
  float mx = -INFINITY;
  if (real) {
    for (int64_t s = y; s < slots; s += groups) {
      mx = fmaxf(mx, LoadF(p.score, p.score_bf16, SlotOffset(p, w, s) + d));
    }
  }
  part_max[threadIdx.x] = mx;
  __syncthreads();
  for (int g = 0; g < groups; ++g) mx = fmaxf(mx, part_max[g * channels + x]);
  float denom = 0, weighted = 0;
  if (real) {
    for (int64_t s = y; s < slots; s += groups) {
      const int64_t at = SlotOffset(p, w, s) + d;
      const float e = expf(LoadF(p.score, p.score_bf16, at) - mx);
      denom += e;
      weighted += e * LoadF(p.kv, p.kv_bf16, at);
    }
  }
  part_denom[threadIdx.x] = denom;
  part_weighted[threadIdx.x] = weighted;
  __syncthreads();
  if (!real) return;
  denom = weighted = 0;
  for (int g = 0; g < groups; ++g) {
    denom += part_denom[g * channels + x];
    weighted += part_weighted[g * channels + x];
  }
  const float pooled = weighted / denom;
  const float grad = LoadF(p.dout, p.dout_bf16, (w - p.first_entry) * p.head_dim + d);
  for (int64_t s = y; s < slots; s += groups) {
    const int64_t at = SlotOffset(p, w, s) + d;
    const float weight = expf(LoadF(p.score, p.score_bf16, at) - mx) / denom;
    p.dkv[at] += weight * grad;
    p.dscore[at] += weight * (LoadF(p.kv, p.kv_bf16, at) - pooled) * grad;
  }
}

bool IsIn(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         (v.dtype == core::DType::kF32 || v.dtype == core::DType::kBF16);
}

}  // namespace

absl::Status CompressPoolBackward(const core::TensorView& kv, const core::TensorView& score,
                                  int64_t num_windows, int64_t ratio, bool overlap,
                                  int64_t first_entry, const core::TensorView& dout,
                                  const core::TensorView& dkv, const core::TensorView& dscore) {
  const int64_t width = kv.rank == 2 ? kv.shape[1] : -1;
  const int64_t head_dim = overlap ? width / 2 : width;
  const bool ok =
      IsIn(kv) && IsIn(score) && IsIn(dout) && kv.rank == 2 && score.SameShape(kv.shape_vector()) &&
      ratio >= 1 && num_windows >= 0 && first_entry >= 0 && first_entry <= num_windows &&
      (!overlap || width % 2 == 0) && kv.shape[0] >= num_windows * ratio && dout.rank == 2 &&
      dout.shape[0] == num_windows - first_entry && dout.shape[1] == head_dim &&
      dkv.device == core::Device::kCuda && dkv.dtype == core::DType::kF32 &&
      dkv.is_contiguous() && dkv.SameShape(kv.shape_vector()) &&
      dscore.device == core::Device::kCuda && dscore.dtype == core::DType::kF32 &&
      dscore.is_contiguous() && dscore.SameShape(kv.shape_vector());
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CompressPoolBackward(windows %d, ratio %d, overlap %d, first %d): kv %s, score %s, dout "
        "%s, dkv %s, dscore %s do not fit", num_windows, ratio, overlap, first_entry,
        kv.DebugString(), score.DebugString(), dout.DebugString(), dkv.DebugString(),
        dscore.DebugString()));
  }
  const int64_t total = (num_windows - first_entry) * head_dim;
  if (total == 0) return absl::OkStatus();
  Params p{kv.data, score.data, dout.data, dkv.data_as<float>(), dscore.data_as<float>(),
           kv.dtype == core::DType::kBF16, score.dtype == core::DType::kBF16,
           dout.dtype == core::DType::kBF16, overlap, num_windows, ratio, head_dim, width,
           first_entry};
  const int groups = SlotGroups((overlap ? 2 : 1) * ratio);
  const int64_t channels = kThreads / groups;
  const int64_t blocks = (num_windows - first_entry) * ((head_dim + channels - 1) / channels);
  if (blocks > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CompressPoolBackward: %d blocks of %d channels exceed the grid", blocks, channels));
  }
  LaunchKernel(CompressPoolBackwardKernel, static_cast<unsigned>(blocks), kThreads, 0, p, groups);
  return LaunchStatus("CompressPoolBackward");
}

}  // namespace v4rl::kernels::cuda
