#include <algorithm>

#include "kernels/cuda/attention_backward.h"
#include "kernels/cuda/attention_backward_pair_tc.h"
#include "kernels/cuda/attention_backward_quad_tc.h"
#include "kernels/cuda/attention_backward_tc.h"
#include "kernels/cuda/attention_quad_tc.h"
#include "kernels/cuda/common.cuh"
#include "kernels/plan/compressed_attention.h"

namespace v4rl::kernels::cuda {
namespace {

struct Params {
  const void* q;
  const void* kv;
  const void* comp_kv;
  const int32_t* comp_idx;
  const float* sink;
  const void* out;
  const float* lse;
  const void* dout;
  float* dq;
  float* dkv;
  float* dcomp_kv;
  float* dsink;
  bool q_bf16, kv_bf16, comp_bf16, out_bf16, dout_bf16;
  int64_t num_heads, head_dim, num_kv, num_comp, comp_topk, q_pos0, kv_pos0, window, comp_ratio;
  float scale;
};

// One block per query, warp h = head h; lane holds channels lane + 32·j, j < kPerLane.
template <int kPerLane>
__global__ void SparseAttentionBackwardKernel(Params p) {
  WaitForPriorKernels();
  extern __shared__ float key_grad[];  // [num_heads, head_dim]
  const int64_t i = blockIdx.x;
  const int h = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t D = p.head_dim;
  const int64_t item = (i * p.num_heads + h) * D;
  float q[kPerLane], dout[kPerLane], dq[kPerLane];
  float d_dot_out = 0;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t c = lane + 32 * j;
    q[j] = c < D ? LoadF(p.q, p.q_bf16, item + c) : 0.0f;
    dout[j] = c < D ? LoadF(p.dout, p.dout_bf16, item + c) : 0.0f;
    d_dot_out += c < D ? dout[j] * LoadF(p.out, p.out_bf16, item + c) : 0.0f;
    dq[j] = 0.0f;
  }
  d_dot_out = WarpSum(d_dot_out);
  const float lse = p.lse[i * p.num_heads + h];
  if (p.dsink != nullptr && lane == 0) {
    atomicAdd(&p.dsink[h], -expf(p.sink[h] - lse) * d_dot_out);
  }
  const int64_t t = p.q_pos0 + i;
  const plan::QueryKeySlots slots =
      plan::KeySlots(t, p.window, p.kv_pos0, p.comp_kv != nullptr, p.comp_idx != nullptr,
                     p.comp_topk, p.comp_ratio, p.num_comp);
  const int32_t* picks = p.comp_idx != nullptr ? p.comp_idx + i * p.comp_topk : nullptr;
  for (int64_t k = 0; k < slots.total(); ++k) {
    const plan::KeySlotSource src = plan::KeySlotAt(slots, k, p.kv_pos0, picks, p.num_comp);
    if (src.index < 0) continue;  // a skipped pick, uniform across the block
    const int64_t row = src.index;
    const void* key = src.compressed ? p.comp_kv : p.kv;
    const bool key_bf16 = src.compressed ? p.comp_bf16 : p.kv_bf16;
    float* dkey = src.compressed ? p.dcomp_kv : p.dkv;
    float kr[kPerLane];
    float s = 0, dp = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t c = lane + 32 * j;
      kr[j] = c < D ? LoadF(key, key_bf16, row * D + c) : 0.0f;
      s += q[j] * kr[j];
      dp += dout[j] * kr[j];
    }
    s = WarpSum(s) * p.scale;
    dp = WarpSum(dp);
    const float prob = expf(s - lse);
    const float ds = prob * (dp - d_dot_out);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t c = lane + 32 * j;
      dq[j] += p.scale * ds * kr[j];
      if (c < D) key_grad[h * D + c] = p.scale * ds * q[j] + prob * dout[j];
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
      float sum = 0;
      for (int64_t g = 0; g < p.num_heads; ++g) sum += key_grad[g * D + c];
      atomicAdd(&dkey[row * D + c], sum);
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t c = lane + 32 * j;
    if (c < D) p.dq[item + c] += dq[j];
  }
}

bool IsInput(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         (v.dtype == core::DType::kF32 || v.dtype == core::DType::kBF16);
}
bool IsF32(const core::TensorView& v, absl::Span<const int64_t> shape) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         v.dtype == core::DType::kF32 && v.SameShape(shape);
}
bool IsBf16(const core::TensorView& v) { return v.dtype == core::DType::kBF16; }

}  // namespace

absl::Status SparseAttentionBackward(const SparseAttentionBackwardArgs& a) {
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "SparseAttentionBackward: %s (q %s, kv %s, comp_kv %s, comp_idx %s, out %s, lse %s, dout "
        "%s, dq %s, dkv %s, dcomp_kv %s, dsink %s)",
        why, a.q.DebugString(), a.kv.DebugString(), a.comp_kv.DebugString(),
        a.comp_idx.DebugString(), a.out.DebugString(), a.lse.DebugString(),
        a.dout.DebugString(), a.dq.DebugString(), a.dkv.DebugString(),
        a.dcomp_kv.DebugString(), a.dsink.DebugString()));
  };
  if (!IsInput(a.q) || a.q.rank != 3 || !IsInput(a.kv) || a.kv.rank != 2) {
    return bad("q must be [num_q, heads, head_dim] and kv [num_kv, head_dim]");
  }
  const int64_t num_q = a.q.shape[0], heads = a.q.shape[1], D = a.q.shape[2];
  const int64_t num_kv = a.kv.shape[0];
  const core::Shape qshape = {num_q, heads, D};
  if (a.kv.shape[1] != D || heads < 1 || heads > 32 || D < 1 || D > 512) {
    return bad("needs 1 <= heads <= 32, 1 <= head_dim <= 512 and kv rows of head_dim");
  }
  if (!IsInput(a.out) || !a.out.SameShape(qshape) || !IsInput(a.dout) ||
      !a.dout.SameShape(qshape) || !IsF32(a.lse, {num_q, heads}) || !IsF32(a.sink, {heads}) ||
      !IsF32(a.dq, qshape) || !IsF32(a.dkv, {num_kv, D}) ||
      (a.dsink.data != nullptr && !IsF32(a.dsink, {heads}))) {
    return bad("out/dout must match q; lse [num_q, heads], sink [heads], dq, dkv f32");
  }
  const bool has_comp = a.comp_kv.data != nullptr;
  int64_t num_comp = 0, topk = 0;
  if (has_comp) {
    if (!IsInput(a.comp_kv) || a.comp_kv.rank != 2 || a.comp_kv.shape[1] != D) {
      return bad("comp_kv must be [num_comp, head_dim]");
    }
    num_comp = a.comp_kv.shape[0];
    if (!IsF32(a.dcomp_kv, {num_comp, D})) return bad("dcomp_kv must be f32 like comp_kv");
    if (a.comp_idx.data != nullptr) {
      if (a.comp_idx.device != core::Device::kCuda || a.comp_idx.dtype != core::DType::kI32 ||
          a.comp_idx.rank != 2 || a.comp_idx.shape[0] != num_q || !a.comp_idx.is_contiguous()) {
        return bad("comp_idx must be [num_q, topk] i32");
      }
      topk = a.comp_idx.shape[1];
    } else if (a.comp_ratio <= 0) {
      return bad("comp_ratio must be > 0 without comp_idx");
    }
  }
  if (a.tensor_cores) {
    const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    if (!IsBf16(a.q) || !IsBf16(a.kv) || !IsBf16(a.dout) || (has_comp && !IsBf16(a.comp_kv)) ||
        D % 32 != 0 || !aligned(a.q.data) || !aligned(a.kv.data) || !aligned(a.dout.data) ||
        (has_comp && !aligned(a.comp_kv.data))) {
      return bad("tensor_cores needs bf16 q, kv, comp_kv and dout, 16-byte aligned, and "
                 "head_dim a multiple of 32");
    }
  }
  if (num_q == 0) return absl::OkStatus();
  const int64_t last = a.q_pos0 + num_q - 1;
  if (a.window < 1 || last - a.kv_pos0 >= num_kv ||
      a.q_pos0 < a.kv_pos0) {
    return bad("every query's position must have its raw row (kv_pos0 <= q_pos0, last < kv end)");
  }
  if (a.tensor_cores && D == kQuadHeadDim && reinterpret_cast<uintptr_t>(a.out.data) % 16 == 0 &&
      SharedKeyListApplies(has_comp, a.comp_idx.data != nullptr, num_comp, topk)) {
    return LaunchSparseAttentionBackwardQuadTc(a);
  }
  if (a.tensor_cores) {
    return SharedKeyListApplies(has_comp, a.comp_idx.data != nullptr, num_comp, topk)
               ? LaunchSparseAttentionBackwardPairTc(a)
               : LaunchSparseAttentionBackwardTc(a);
  }
  Params p{a.q.data, a.kv.data, has_comp ? a.comp_kv.data : nullptr,
           static_cast<const int32_t*>(a.comp_idx.data), a.sink.data_as<float>(), a.out.data,
           a.lse.data_as<float>(), a.dout.data, a.dq.data_as<float>(), a.dkv.data_as<float>(),
           has_comp ? a.dcomp_kv.data_as<float>() : nullptr,
           a.dsink.data ? a.dsink.data_as<float>() : nullptr, IsBf16(a.q), IsBf16(a.kv),
           has_comp && IsBf16(a.comp_kv), IsBf16(a.out), IsBf16(a.dout), heads, D, num_kv,
           num_comp, topk, a.q_pos0, a.kv_pos0, a.window, a.comp_ratio, a.scale};
  const int threads = static_cast<int>(heads * 32);
  const size_t shared = static_cast<size_t>(heads * D) * sizeof(float);
  auto launch = [&](auto kernel) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared));
    LaunchKernel(kernel, num_q, threads, shared, p);
  };
  if (D <= 128) {
    launch(SparseAttentionBackwardKernel<4>);
  } else if (D <= 256) {
    launch(SparseAttentionBackwardKernel<8>);
  } else {
    launch(SparseAttentionBackwardKernel<16>);
  }
  return LaunchStatus("SparseAttentionBackward");
}

}  // namespace v4rl::kernels::cuda
