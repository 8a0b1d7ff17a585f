// BuildMoePlanOnDevice (kernels/cuda/moe.h): plan::BuildMoeDispatchPlan's stable counting sort
// in one block of eight warps, so the decode step needs no host round trip for the routed experts.
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

constexpr int kWarps = 8;

// Warp w takes the contiguous slot range [w · chunk, (w + 1) · chunk): per-(warp, expert) counts
// with shared atomics, then one thread turns them into offsets and per-warp cursors (experts in
// order, warps in order within an expert), then every warp places its slots 32 at a time in
// ascending slot order (rank within the 32 by __match_any_sync). Slot order within an expert is
// kept, as the host's sequential placement keeps it.
__global__ void __launch_bounds__(32 * kWarps) DispatchKernel(DispatchParams p) {
  WaitForPriorKernels();
  extern __shared__ int32_t shared[];
  const int experts = p.experts;
  int32_t* count = shared;  // [kWarps][E], then cursors in place
  __shared__ int32_t picks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = threadIdx.x; i < kWarps * experts; i += blockDim.x) count[i] = 0;
  __syncthreads();
  const int64_t chunk = (p.num_slots + kWarps - 1) / kWarps;
  const int64_t begin = Min64(p.num_slots, warp * chunk), end = Min64(p.num_slots, begin + chunk);
  for (int64_t s = begin + lane; s < end; s += 32) {
    const int32_t e = p.topk_idx[s];
    if (e >= 0 && e < experts) atomicAdd(&count[warp * experts + e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t run = 0;
    for (int e = 0; e < experts; ++e) {
      p.offsets[e] = run;
      for (int w = 0; w < kWarps; ++w) {
        const int32_t c = count[w * experts + e];
        count[w * experts + e] = run;
        run += c;
      }
    }
    p.offsets[experts] = run;
    picks = run;
  }
  __syncthreads();
  for (int64_t s = picks + threadIdx.x; s < p.num_slots; s += blockDim.x) p.slots[s] = -1;
  int32_t* cursor = count + warp * experts;
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t s = base + lane;
    const int32_t e = s < end ? p.topk_idx[s] : -1;
    const bool valid = e >= 0 && e < experts;
    const unsigned same = __match_any_sync(0xffffffffu, valid ? e : -1);
    const int rank = __popc(same & ((1u << lane) - 1u));
    if (valid) {
      const int32_t pos = cursor[e] + rank;
      p.slots[pos] = static_cast<int32_t>(s);
      p.pick_of_slot[s] = pos;
    } else if (s < end) {
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
  const size_t shared_bytes = kWarps * num_experts * sizeof(int32_t);  // <= 32 KiB
  LaunchKernel(DispatchKernel, 1, 32 * kWarps, shared_bytes, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
