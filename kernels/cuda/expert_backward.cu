#include "kernels/cuda/common.cuh"
#include "kernels/cuda/expert_backward.h"

namespace v4rl::kernels::cuda {
namespace {

__global__ void CombineBackwardKernel(const void* expert_out, bool eo_bf16, const int32_t* pick,
                                      const float* weight, const void* dout, bool dout_bf16,
                                      int64_t k, int64_t hidden, int64_t rows, float* dexpert,
                                      float* dweight) {
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t p = pick[t * k + j];
    if (p < 0 || p >= rows) continue;  // uniform across the block
    const float w = weight[t * k + j];
    float dot = 0;
    for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      const float g = LoadF(dout, dout_bf16, t * hidden + h);
      dexpert[p * hidden + h] += w * g;
      dot += g * LoadF(expert_out, eo_bf16, p * hidden + h);
    }
    dot = BlockSum(dot, scratch);
    if (dweight != nullptr && threadIdx.x == 0) dweight[t * k + j] += dot;
  }
}

__global__ void GatherBackwardKernel(const void* dgathered, bool bf16, const int32_t* pick,
                                     int64_t k, int64_t hidden, int64_t rows, float* dx) {
  WaitForPriorKernels();
  const int64_t t = blockIdx.x;
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = pick[t * k + j];
      if (p >= 0 && p < rows) sum += LoadF(dgathered, bf16, p * hidden + h);
    }
    dx[t * hidden + h] += sum;
  }
}

bool Rows(const core::TensorView& v, bool f32_only) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         v.rank == 2 &&
         (v.dtype == core::DType::kF32 || (!f32_only && v.dtype == core::DType::kBF16));
}
bool Picks(const core::TensorView& v, int64_t count) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         v.dtype == core::DType::kI32 && v.numel() == count;
}
int Threads(int64_t hidden) { return hidden >= 512 ? 256 : 128; }

}  // namespace

absl::Status MoeCombineBackward(const core::TensorView& expert_out,
                                const core::TensorView& pick_of_slot,
                                const core::TensorView& topk_weight, const core::TensorView& dout,
                                const core::TensorView& dexpert_out,
                                const core::TensorView& dweight) {
  const bool shaped = Rows(expert_out, false) && Rows(dout, false) && Rows(topk_weight, true);
  const int64_t tokens = shaped ? dout.shape[0] : 0, hidden = shaped ? dout.shape[1] : 0;
  const int64_t k = shaped ? topk_weight.shape[1] : 0;
  if (!shaped || expert_out.shape[1] != hidden || topk_weight.shape[0] != tokens ||
      !Picks(pick_of_slot, tokens * k) || !Rows(dexpert_out, true) ||
      !dexpert_out.SameShape(expert_out.shape_vector()) ||
      (dweight.data != nullptr && (!Rows(dweight, true) || !dweight.SameShape(topk_weight.shape_vector())))) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MoeCombineBackward: expert_out %s, pick_of_slot %s, topk_weight %s, dout %s, "
        "dexpert_out %s, dweight %s do not fit", expert_out.DebugString(),
        pick_of_slot.DebugString(), topk_weight.DebugString(), dout.DebugString(),
        dexpert_out.DebugString(), dweight.DebugString()));
  }
  if (tokens == 0) return absl::OkStatus();
  LaunchKernel(CombineBackwardKernel, tokens, Threads(hidden), 0, expert_out.data,
               expert_out.dtype == core::DType::kBF16,
               static_cast<const int32_t*>(pick_of_slot.data), topk_weight.data_as<float>(),
               dout.data, dout.dtype == core::DType::kBF16, k, hidden, expert_out.shape[0],
               dexpert_out.data_as<float>(), dweight.data ? dweight.data_as<float>() : nullptr);
  return LaunchStatus("MoeCombineBackward");
}

absl::Status MoeGatherBackward(const core::TensorView& dgathered,
                               const core::TensorView& pick_of_slot, int64_t k,
                               const core::TensorView& dx) {
  const bool shaped = Rows(dgathered, false) && Rows(dx, true) && k >= 1;
  if (!shaped || dx.shape[1] != dgathered.shape[1] || !Picks(pick_of_slot, dx.shape[0] * k)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MoeGatherBackward: dgathered %s, pick_of_slot %s, k %d, dx %s do not fit",
        dgathered.DebugString(), pick_of_slot.DebugString(), k, dx.DebugString()));
  }
  if (dx.shape[0] == 0) return absl::OkStatus();
  LaunchKernel(GatherBackwardKernel, dx.shape[0], Threads(dx.shape[1]), 0, dgathered.data,
               dgathered.dtype == core::DType::kBF16,
               static_cast<const int32_t*>(pick_of_slot.data), k, dx.shape[1], dgathered.shape[0],
               dx.data_as<float>());
  return LaunchStatus("MoeGatherBackward");
}

}  // namespace v4rl::kernels::cuda
