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

__global__ void CompressPoolBackwardKernel(Params p) {
  WaitForPriorKernels();
  const int64_t entries = p.num_windows - p.first_entry;
  const int64_t total = entries * p.head_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = p.first_entry + i / p.head_dim, d = i % p.head_dim;
    const int64_t slots = (p.overlap && w >= 1 ? 2 : 1) * p.ratio;
    float mx = -INFINITY;
    for (int64_t s = 0; s < slots; ++s) {
      mx = fmaxf(mx, LoadF(p.score, p.score_bf16, SlotOffset(p, w, s) + d));
    }
    float denom = 0, weighted = 0;
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t at = SlotOffset(p, w, s) + d;
      const float e = expf(LoadF(p.score, p.score_bf16, at) - mx);
      denom += e;
      weighted += e * LoadF(p.kv, p.kv_bf16, at);
    }
    const float pooled = weighted / denom;
    const float g = LoadF(p.dout, p.dout_bf16, (w - p.first_entry) * p.head_dim + d);
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t at = SlotOffset(p, w, s) + d;
      const float weight = expf(LoadF(p.score, p.score_bf16, at) - mx) / denom;
      p.dkv[at] += weight * g;
      p.dscore[at] += weight * (LoadF(p.kv, p.kv_bf16, at) - pooled) * g;
    }
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
  LaunchKernel(CompressPoolBackwardKernel, std::min<int64_t>((total + 255) / 256, 65536), 256, 0,
               p);
  return LaunchStatus("CompressPoolBackward");
}

}  // namespace v4rl::kernels::cuda
