#include <algorithm>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/moe.h"
#include "kernels/plan/topk.h"

namespace v4rl::kernels::cuda {
namespace {

struct RouteParams {
  const float* logits;
  const float* bias;
  const int32_t* tid2eid;
  const int32_t* token_ids;
  const int32_t* replay;
  float* scores;
  int32_t* topk_idx;
  float* topk_weight;
  int64_t num_experts, k, vocab;
  bool hash;
  float route_scale;
};

// One block per token: scores into shared memory, then one thread selects and weighs.
__global__ void RouteKernel(RouteParams p) {
  WaitForPriorKernels();
  __shared__ float score[kMaxRoutedExperts];
  __shared__ float biased[kMaxRoutedExperts];
  // The picks stay in shared memory until the end: TopK's insertion sort reading back global
  // stores would put memory round trips on this one thread's serial chain.
  __shared__ int32_t idx[kMaxRoutedTopK];
  __shared__ float picked[kMaxRoutedTopK];
  const int64_t t = blockIdx.x;
  for (int64_t e = threadIdx.x; e < p.num_experts; e += blockDim.x) {
    const float v = p.logits[t * p.num_experts + e];
    // softplus with PyTorch's threshold 20, then sqrt.
    const float s = sqrtf(v > 20.0f ? v : log1pf(expf(v)));
    score[e] = s;
    if (p.bias != nullptr) biased[e] = s + p.bias[e];
    if (p.scores != nullptr) p.scores[t * p.num_experts + e] = s;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (p.replay != nullptr) {
    for (int64_t j = 0; j < p.k; ++j) idx[j] = p.replay[t * p.k + j];
  } else if (p.hash) {
    const int32_t id = p.token_ids[t];
    for (int64_t j = 0; j < p.k; ++j) {
      idx[j] = id >= 0 && id < p.vocab ? p.tid2eid[int64_t{id} * p.k + j] : -1;
    }
  } else {
    plan::TopK(biased, static_cast<int32_t>(p.num_experts), static_cast<int32_t>(p.k), idx,
               picked);
  }
  // Unbiased scores of the picks, renormalised (+1e-20 as transformers) and scaled.
  float sum = 0.0f;
  for (int64_t j = 0; j < p.k; ++j) {
    if (idx[j] >= 0 && idx[j] < p.num_experts) sum += score[idx[j]];
  }
  for (int64_t j = 0; j < p.k; ++j) {
    const bool valid = idx[j] >= 0 && idx[j] < p.num_experts;
    p.topk_idx[t * p.k + j] = idx[j];
    p.topk_weight[t * p.k + j] = valid ? score[idx[j]] / (sum + 1e-20f) * p.route_scale : 0.0f;
  }
}

struct GatherParams {
  const void* x;
  const int32_t* slots;
  void* out;
  int64_t picks, hidden, k;
  bool x_bf16, out_bf16;
  bool vec;  // 8-wide accesses (Vec8Ok on x and out)
};

// One block per gathered row (no 64-bit division per element).
__global__ void GatherKernel(GatherParams p) {
  WaitForPriorKernels();
  const int64_t row = blockIdx.x;
  const int32_t slot = p.slots[row];
  const int64_t src = slot < 0 ? 0 : int64_t{slot / static_cast<int32_t>(p.k)} * p.hidden;
  if (p.vec) {
    for (int64_t h = 8 * threadIdx.x; h < p.hidden; h += 8 * blockDim.x) {
      float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (slot >= 0) Load8(p.x, p.x_bf16, src + h, v);
      Store8(p.out, p.out_bf16, row * p.hidden + h, v);
    }
    return;
  }
  for (int64_t h = threadIdx.x; h < p.hidden; h += blockDim.x) {
    StoreF(p.out, p.out_bf16, row * p.hidden + h, slot < 0 ? 0.0f : LoadF(p.x, p.x_bf16, src + h));
  }
}

struct CombineParams {
  const void* expert_out;
  const int32_t* pick_of_slot;
  const float* weight;
  const void* shared;
  void* out;
  int64_t num_tokens, hidden, k;
  bool eo_bf16, shared_bf16, out_bf16;
  bool vec;       // 8-wide accesses (Vec8Ok on expert_out, shared and out)
  bool weighted;  // false: every pick weighs 1
};

// One block per token: its picks and weights read once, then every channel.
__global__ void CombineKernel(CombineParams p) {
  WaitForPriorKernels();
  const int64_t t = blockIdx.x;
  if (p.vec) {
    for (int64_t h = 8 * threadIdx.x; h < p.hidden; h += 8 * blockDim.x) {
      float routed[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t j = 0; j < p.k; ++j) {
        const int32_t pick = p.pick_of_slot[t * p.k + j];
        if (pick < 0) continue;
        const float weight = p.weighted ? p.weight[t * p.k + j] : 1.0f;
        float v[8];
        Load8(p.expert_out, p.eo_bf16, pick * p.hidden + h, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) routed[e] += v[e] * weight;
      }
      if (p.shared != nullptr) {
        float v[8];
        Load8(p.shared, p.shared_bf16, t * p.hidden + h, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) routed[e] += v[e];
      }
      Store8(p.out, p.out_bf16, t * p.hidden + h, routed);
    }
    return;
  }
  for (int64_t h = threadIdx.x; h < p.hidden; h += blockDim.x) {
    float routed = 0.0f;
    for (int64_t j = 0; j < p.k; ++j) {
      const int32_t pick = p.pick_of_slot[t * p.k + j];
      if (pick >= 0) {
        routed += LoadF(p.expert_out, p.eo_bf16, pick * p.hidden + h) *
                  (p.weighted ? p.weight[t * p.k + j] : 1.0f);
      }
    }
    if (p.shared != nullptr) routed += LoadF(p.shared, p.shared_bf16, t * p.hidden + h);
    StoreF(p.out, p.out_bf16, t * p.hidden + h, routed);
  }
}

// One block per slot: its pick's row times its weight.
__global__ void ScalePicksKernel(void* act, bool bf16, int64_t cols, const int32_t* pick_of_slot,
                                 const float* weight) {
  WaitForPriorKernels();
  const int64_t s = blockIdx.x;
  const int32_t pick = pick_of_slot[s];
  if (pick < 0) return;
  const float w = weight[s];
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const int64_t e = int64_t{pick} * cols + c;
    StoreF(act, bf16, e, LoadF(act, bf16, e) * w);
  }
}

}  // namespace

absl::Status RouteTopK(const RouteArgs& a) {
  const char* op = "cuda::RouteTopK";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "logits", a.logits, {DType::kF32}),
                         CheckDeviceView(op, "topk_idx", a.topk_idx, {DType::kI32}),
                         CheckDeviceView(op, "topk_weight", a.topk_weight, {DType::kF32})}) {
    if (!s.ok()) return s;
  }
  if (absl::Status s = CheckArg(a.logits.rank == 2 && a.topk_idx.rank == 2, op,
                                "logits [N, E] and topk_idx [N, k]");
      !s.ok()) {
    return s;
  }
  const int64_t num_tokens = a.logits.shape[0], num_experts = a.logits.shape[1];
  const int64_t k = a.topk_idx.shape[1];
  for (absl::Status s :
       {CheckArg(num_experts <= kMaxRoutedExperts && k <= kMaxRoutedTopK && k <= num_experts, op,
                 "needs k <= E, E <= 1024 and k <= 16"),
        CheckViewShape(op, "topk_idx", a.topk_idx, {num_tokens, k}),
        CheckViewShape(op, "topk_weight", a.topk_weight, {num_tokens, k})}) {
    if (!s.ok()) return s;
  }
  RouteParams p{};
  p.logits = a.logits.data_as<float>();
  p.topk_idx = a.topk_idx.data_as<int32_t>();
  p.topk_weight = a.topk_weight.data_as<float>();
  p.num_experts = num_experts;
  p.k = k;
  p.hash = a.hash;
  p.route_scale = a.route_scale;
  if (a.scores.data != nullptr) {
    if (absl::Status s = CheckDeviceView(op, "scores", a.scores, {DType::kF32}); !s.ok()) return s;
    if (absl::Status s = CheckViewShape(op, "scores", a.scores, {num_tokens, num_experts}); !s.ok()) {
      return s;
    }
    p.scores = a.scores.data_as<float>();
  }
  if (a.replay_idx.data != nullptr) {
    if (absl::Status s = CheckDeviceView(op, "replay_idx", a.replay_idx, {DType::kI32}); !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckViewShape(op, "replay_idx", a.replay_idx, {num_tokens, k}); !s.ok()) {
      return s;
    }
    p.replay = a.replay_idx.data_as<int32_t>();
  } else if (a.hash) {
    for (absl::Status s : {CheckDeviceView(op, "tid2eid", a.tid2eid, {DType::kI32}),
                           CheckDeviceView(op, "token_ids", a.token_ids, {DType::kI32})}) {
      if (!s.ok()) return s;
    }
    if (absl::Status s = CheckArg(a.tid2eid.rank == 2 && a.tid2eid.shape[1] == k, op,
                                  "tid2eid must be [V, k]");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckViewShape(op, "token_ids", a.token_ids, {num_tokens}); !s.ok()) {
      return s;
    }
    p.tid2eid = a.tid2eid.data_as<int32_t>();
    p.token_ids = a.token_ids.data_as<int32_t>();
    p.vocab = a.tid2eid.shape[0];
  } else {
    if (absl::Status s = CheckDeviceView(op, "bias", a.bias, {DType::kF32}); !s.ok()) return s;
    if (absl::Status s = CheckViewShape(op, "bias", a.bias, {num_experts}); !s.ok()) return s;
  }
  if (a.bias.data != nullptr && !a.hash && a.replay_idx.data == nullptr) {
    p.bias = a.bias.data_as<float>();
  }
  if (num_tokens == 0) return absl::OkStatus();
  LaunchKernel(RouteKernel, static_cast<unsigned>(num_tokens), 128, 0, p);
  return LaunchStatus(op);
}

absl::Status UploadMoePlan(const plan::MoeDispatchPlan& plan, const core::TensorView& slots,
                           const core::TensorView& pick_of_slot) {
  const char* op = "cuda::UploadMoePlan";
  const int64_t num_slots = plan.num_tokens * plan.num_topk;
  for (absl::Status s : {CheckDeviceView(op, "slots", slots, {core::DType::kI32}),
                         CheckDeviceView(op, "pick_of_slot", pick_of_slot, {core::DType::kI32}),
                         CheckArg(slots.numel() >= num_slots && pick_of_slot.numel() >= num_slots,
                                  op, "slots and pick_of_slot need num_tokens · k entries")}) {
    if (!s.ok()) return s;
  }
  std::vector<int32_t> host_slots(plan.slots.begin(), plan.slots.end());
  std::vector<int32_t> host_picks(num_slots, -1);
  for (size_t p = 0; p < plan.slots.size(); ++p) host_picks[plan.slots[p]] = static_cast<int32_t>(p);
  for (auto [dst, src, n] : {std::tuple{slots.data, host_slots.data(), host_slots.size()},
                             std::tuple{pick_of_slot.data, host_picks.data(), host_picks.size()}}) {
    if (n == 0) continue;
    if (cudaError_t e = cudaMemcpy(dst, src, n * sizeof(int32_t), cudaMemcpyHostToDevice);
        e != cudaSuccess) {
      return absl::InternalError(absl::StrFormat("%s: %s", op, cudaGetErrorString(e)));
    }
  }
  return absl::OkStatus();
}

absl::Status MoeGather(const core::TensorView& x, const core::TensorView& slots, int64_t k,
                       const core::TensorView& out) {
  const char* op = "cuda::MoeGather";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "x", x, {DType::kBF16, DType::kF32}),
                         CheckDeviceView(op, "slots", slots, {DType::kI32}),
                         CheckDeviceView(op, "out", out, {DType::kBF16, DType::kF32}),
                         CheckArg(x.rank == 2 && out.rank == 2 && out.shape[1] == x.shape[1] &&
                                      slots.numel() >= out.shape[0] && k > 0,
                                  op, "x [N, H], out [P, H], slots >= P entries, k > 0")}) {
    if (!s.ok()) return s;
  }
  GatherParams p{x.data, slots.data_as<int32_t>(), out.data, out.shape[0], x.shape[1], k,
                 IsBf16(x), IsBf16(out)};
  if (p.picks * p.hidden == 0) return absl::OkStatus();
  p.vec = Vec8Ok(p.x, p.hidden) && Vec8Ok(p.out, p.hidden);
  LaunchKernel(GatherKernel, static_cast<unsigned>(p.picks), 256, 0, p);
  return LaunchStatus(op);
}

absl::Status MoeCombine(const core::TensorView& expert_out, const core::TensorView& pick_of_slot,
                        const core::TensorView& topk_weight, const core::TensorView& shared,
                        const core::TensorView& out, bool weighted) {
  const char* op = "cuda::MoeCombine";
  using core::DType;
  for (absl::Status s :
       {CheckDeviceView(op, "expert_out", expert_out, {DType::kBF16, DType::kF32}),
        CheckDeviceView(op, "pick_of_slot", pick_of_slot, {DType::kI32}),
        CheckDeviceView(op, "topk_weight", topk_weight, {DType::kF32}),
        CheckDeviceView(op, "out", out, {DType::kBF16, DType::kF32}),
        CheckArg(out.rank == 2 && topk_weight.rank == 2 && expert_out.rank == 2 &&
                     topk_weight.shape[0] == out.shape[0] && expert_out.shape[1] == out.shape[1] &&
                     pick_of_slot.numel() == topk_weight.numel(),
                 op, "out [N, H], topk_weight [N, k], expert_out [P, H], pick_of_slot [N·k]")}) {
    if (!s.ok()) return s;
  }
  CombineParams p{expert_out.data, pick_of_slot.data_as<int32_t>(), topk_weight.data_as<float>(),
                  nullptr, out.data, out.shape[0], out.shape[1], topk_weight.shape[1],
                  IsBf16(expert_out), false, IsBf16(out)};
  if (shared.data != nullptr) {
    if (absl::Status s = CheckDeviceView(op, "shared", shared, {DType::kBF16, DType::kF32});
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckViewShape(op, "shared", shared, {out.shape[0], out.shape[1]});
        !s.ok()) {
      return s;
    }
    p.shared = shared.data;
    p.shared_bf16 = IsBf16(shared);
  }
  if (p.num_tokens * p.hidden == 0) return absl::OkStatus();
  p.vec = Vec8Ok(p.expert_out, p.hidden) && Vec8Ok(p.out, p.hidden) &&
          (p.shared == nullptr || Vec8Ok(p.shared, p.hidden));
  p.weighted = weighted;
  LaunchKernel(CombineKernel, static_cast<unsigned>(p.num_tokens), 256, 0, p);
  return LaunchStatus(op);
}

absl::Status MoeScalePicks(const core::TensorView& act, const core::TensorView& pick_of_slot,
                           const core::TensorView& topk_weight) {
  const char* op = "cuda::MoeScalePicks";
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "act", act, {DType::kBF16, DType::kF32}),
                         CheckDeviceView(op, "pick_of_slot", pick_of_slot, {DType::kI32}),
                         CheckDeviceView(op, "topk_weight", topk_weight, {DType::kF32}),
                         CheckArg(act.rank == 2 && pick_of_slot.numel() == topk_weight.numel(), op,
                                  "act [P, I], pick_of_slot [N·k], topk_weight [N, k]")}) {
    if (!s.ok()) return s;
  }
  const int64_t slots = pick_of_slot.numel();
  if (slots == 0 || act.shape[1] == 0) return absl::OkStatus();
  if (absl::Status s = CheckArg(slots < (int64_t{1} << 31), op, "too many slots"); !s.ok()) {
    return s;
  }
  LaunchKernel(ScalePicksKernel, static_cast<unsigned>(slots), 256, 0, act.data, IsBf16(act),
               act.shape[1], pick_of_slot.data_as<int32_t>(), topk_weight.data_as<float>());
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
