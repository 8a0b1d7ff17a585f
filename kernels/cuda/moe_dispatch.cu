// BuildMoePlanOnDevice (kernels/cuda/moe.h): plan::BuildMoeDispatchPlan's stable counting sort
// in one block, so the decode step needs no host round trip for the routed experts.
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/moe.h"

namespace v4rl::kernels::cuda {
namespace {

struct DispatchParams {
  const int32_t* topk_idx;
  int32_t* offsets;
  int32_t* slots;
  int32_t* pick_of_slot;
  int64_t num_slots;
  int32_t experts;
};

// Counts with shared atomics, prefix sums by one thread, then one warp places the slots 32 at a
// time in ascending slot order (rank within the 32 by __match_any_sync), which keeps token order
// within an expert as the host's sequential placement does.
__global__ void DispatchKernel(DispatchParams p) {
  extern __shared__ int32_t shared[];
  int32_t* count = shared;                  // [E + 1]; count[E] ends up the number of picks
  int32_t* cursor = shared + p.experts + 1;  // [E]
  for (int e = threadIdx.x; e <= p.experts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int64_t s = threadIdx.x; s < p.num_slots; s += blockDim.x) {
    const int32_t e = p.topk_idx[s];
    if (e >= 0 && e < p.experts) atomicAdd(&count[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t run = 0;
    for (int e = 0; e < p.experts; ++e) {
      const int32_t c = count[e];
      p.offsets[e] = run;
      cursor[e] = run;
      run += c;
    }
    p.offsets[p.experts] = run;
    count[p.experts] = run;
  }
  __syncthreads();
  const int64_t picks = count[p.experts];
  for (int64_t s = picks + threadIdx.x; s < p.num_slots; s += blockDim.x) p.slots[s] = -1;
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  for (int64_t base = 0; base < p.num_slots; base += 32) {
    const int64_t s = base + lane;
    const int32_t e = s < p.num_slots ? p.topk_idx[s] : -1;
    const bool valid = e >= 0 && e < p.experts;
    const unsigned same = __match_any_sync(0xffffffffu, valid ? e : -1);
    const int rank = __popc(same & ((1u << lane) - 1u));
    if (valid) {
      const int32_t pos = cursor[e] + rank;
      p.slots[pos] = static_cast<int32_t>(s);
      p.pick_of_slot[s] = pos;
    } else if (s < p.num_slots) {
      p.pick_of_slot[s] = -1;
    }
    __syncwarp();
    if (valid && rank == 0) cursor[e] += __popc(same);
    __syncwarp();
  }
}

}  // namespace

absl::Status BuildMoePlanOnDevice(const core::TensorView& topk_idx, int64_t num_experts,
                                  const core::TensorView& offsets, const core::TensorView& slots,
                                  const core::TensorView& pick_of_slot) {
  const char* op = "cuda::BuildMoePlanOnDevice";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "topk_idx", topk_idx, {DType::kI32}),
                         CheckDeviceView(op, "offsets", offsets, {DType::kI32}),
                         CheckDeviceView(op, "slots", slots, {DType::kI32}),
                         CheckDeviceView(op, "pick_of_slot", pick_of_slot, {DType::kI32})}) {
    if (!s.ok()) return s;
  }
  const int64_t num_slots = topk_idx.numel();
  if (absl::Status s = CheckArg(num_experts > 0 && num_experts <= kMaxRoutedExperts &&
                                    offsets.numel() == num_experts + 1 &&
                                    slots.numel() == num_slots &&
                                    pick_of_slot.numel() == num_slots && num_slots < (int64_t{1} << 31),
                                op, "offsets [E + 1], slots and pick_of_slot [N · k], E <= 1024");
      !s.ok()) {
    return s;
  }
  DispatchParams p{topk_idx.data_as<int32_t>(), offsets.data_as<int32_t>(),
                   slots.data_as<int32_t>(), pick_of_slot.data_as<int32_t>(), num_slots,
                   static_cast<int32_t>(num_experts)};
  const size_t shared_bytes = (2 * num_experts + 1) * sizeof(int32_t);
  DispatchKernel<<<1, 256, shared_bytes>>>(p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
