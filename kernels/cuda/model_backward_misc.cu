#include "absl/strings/str_format.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/model_backward_misc.h"

namespace v4rl::kernels::cuda {
namespace {

bool F32(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         v.dtype == core::DType::kF32;
}
bool I32(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         v.dtype == core::DType::kI32;
}
absl::Status Bad(const char* op) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: tensors do not fit", op));
}
unsigned Blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

__global__ void RoutingBackwardKernel(const float* scores, const int32_t* idx, int64_t tokens,
                                      int64_t experts, int64_t k, float route_scale,
                                      float denom_eps, const float* dw, float* dscores) {
  WaitForPriorKernels();
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* s = scores + t * experts;
  float sum = 0, weighted = 0;
  for (int64_t j = 0; j < k; ++j) {
    sum += s[idx[t * k + j]];
    weighted += dw[t * k + j] * s[idx[t * k + j]];
  }
  const float denom = sum + denom_eps;
  const float shared = route_scale * weighted / (denom * denom);
  for (int64_t j = 0; j < k; ++j)
    dscores[t * experts + idx[t * k + j]] += route_scale * dw[t * k + j] / denom - shared;
}

__global__ void SqrtSoftplusBackwardKernel(const float* x, const float* dy, float* dx, int64_t n) {
  WaitForPriorKernels();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  const bool linear = v > 20.0f;
  const float softplus = linear ? v : log1pf(expf(v));
  const float slope = linear ? 1.0f : 1.0f / (1.0f + expf(-v));
  dx[i] += dy[i] * slope / (2.0f * sqrtf(softplus));
}

__global__ void ExpertWeightKernel(const float* act, const int32_t* slots, const float* w,
                                   int64_t inter, float* u, void* weighted, bool weighted_bf16,
                                   float* dweight) {
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const int64_t p = blockIdx.x;
  const int64_t slot = slots[p];
  if (slot < 0) return;  // a row past the real picks (a dropped pick): nothing to weight
  const float ws = w[slot];
  float dot = 0;
  for (int64_t i = threadIdx.x; i < inter; i += blockDim.x) {
    const float a = act[p * inter + i];
    dot += u[p * inter + i] * a;
    u[p * inter + i] *= ws;
    StoreF(weighted, weighted_bf16, p * inter + i, ws * a);
  }
  dot = BlockSum(dot, scratch);
  if (threadIdx.x == 0) dweight[slot] += dot;  // each slot belongs to one pick: no race
}

// dape[j, c] += Σ dscore[r, c] over the rows r whose position r mod seq_len is j mod ratio, as
// AddColumnSums' value: column j·width + c, row q the q-th such row of phase j (b = q / per_seq,
// position j + (q mod per_seq)·ratio; 0 past the sequence's end).
struct ApeGradValue {
  const float* dscore;
  int64_t seq_len, ratio, width, per_seq;
  __device__ float operator()(int64_t q, int64_t column) const {
    const int64_t j = column / width, c = column % width;
    const int64_t position = j + (q % per_seq) * ratio;
    if (position >= seq_len) return 0.0f;
    return dscore[((q / per_seq) * seq_len + position) * width + c];
  }
};

__global__ void EmbeddingBackwardKernel(const float* ds, const int32_t* ids, int64_t n,
                                        int64_t hidden, float* dembed) {
  WaitForPriorKernels();
  const int64_t t = blockIdx.x;
  float* row = dembed + static_cast<int64_t>(ids[t]) * hidden;
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += ds[(t * n + j) * hidden + h];
    atomicAdd(row + h, sum);
  }
}

}  // namespace

absl::Status AddRowSums(const core::TensorView& rows, const core::TensorView& out) {
  if (!F32(rows) || rows.rank != 2 || !F32(out) || out.numel() != rows.shape[1]) {
    return Bad("AddRowSums");
  }
  if (rows.shape[0] == 0) return absl::OkStatus();
  // AddColumnSums' second launch: one thread a column, the rows added in order.
  const int64_t width = rows.shape[1];
  LaunchKernel(AddChunkSumsKernel, static_cast<unsigned>((width + 255) / 256), 256, 0,
               rows.data_as<float>(), rows.shape[0], width, out.data_as<float>());
  return LaunchStatus("AddRowSums");
}

absl::Status FillZero(const core::TensorView& x) {
  const int64_t n = x.numel();
  const bool bf16 = x.dtype == core::DType::kBF16;
  if (n == 0 && (bf16 || x.dtype == core::DType::kF32)) return absl::OkStatus();  // may be null
  if (!F32(x) &&
      !(bf16 && x.device == core::Device::kCuda && x.data != nullptr && x.is_contiguous())) {
    return Bad("FillZero");
  }
  // All-zero bytes are +0 in f32 and bf16; the driver's memset runs at copy bandwidth.
  if (cudaMemsetAsync(x.data, 0, n * (bf16 ? 2 : 4), LaunchStream()) != cudaSuccess) {
    return LaunchStatus("FillZero");
  }
  return absl::OkStatus();
}

absl::Status RoutingWeightsBackward(const core::TensorView& scores,
                                    const core::TensorView& topk_idx, float route_scale,
                                    float denom_eps, const core::TensorView& dweights,
                                    const core::TensorView& dscores) {
  if (!F32(scores) || scores.rank != 2 || !I32(topk_idx) || topk_idx.rank != 2 ||
      topk_idx.shape[0] != scores.shape[0] || !F32(dweights) ||
      !dweights.SameShape(topk_idx.shape_vector()) || !F32(dscores) ||
      !dscores.SameShape(scores.shape_vector())) {
    return Bad("RoutingWeightsBackward");
  }
  const int64_t tokens = scores.shape[0];
  if (tokens == 0) return absl::OkStatus();
  LaunchKernel(RoutingBackwardKernel, Blocks(tokens, 128), 128, 0, scores.data_as<float>(),
               static_cast<const int32_t*>(topk_idx.data), tokens, scores.shape[1],
               topk_idx.shape[1], route_scale, denom_eps, dweights.data_as<float>(),
               dscores.data_as<float>());
  return LaunchStatus("RoutingWeightsBackward");
}

absl::Status SqrtSoftplusBackward(const core::TensorView& x, const core::TensorView& dy,
                                  const core::TensorView& dx) {
  if (!F32(x) || !F32(dy) || !F32(dx) || !dy.SameShape(x.shape_vector()) ||
      !dx.SameShape(x.shape_vector())) {
    return Bad("SqrtSoftplusBackward");
  }
  const int64_t n = x.numel();
  if (n == 0) return absl::OkStatus();
  LaunchKernel(SqrtSoftplusBackwardKernel, Blocks(n, 256), 256, 0, x.data_as<float>(),
               dy.data_as<float>(), dx.data_as<float>(), n);
  return LaunchStatus("SqrtSoftplusBackward");
}

absl::Status ExpertWeightBackward(const core::TensorView& act, const core::TensorView& slots,
                                  const core::TensorView& topk_weight, const core::TensorView& u,
                                  const core::TensorView& weighted_act,
                                  const core::TensorView& dweight) {
  if (!F32(act) || act.rank != 2 || !I32(slots) || slots.numel() != act.shape[0] || !F32(u) ||
      !u.SameShape(act.shape_vector()) || weighted_act.device != core::Device::kCuda ||
      weighted_act.data == nullptr || !weighted_act.is_contiguous() ||
      (weighted_act.dtype != core::DType::kF32 && weighted_act.dtype != core::DType::kBF16) ||
      !weighted_act.SameShape(act.shape_vector()) || !F32(topk_weight) || !F32(dweight) ||
      !dweight.SameShape(topk_weight.shape_vector())) {
    return Bad("ExpertWeightBackward");
  }
  if (act.shape[0] == 0) return absl::OkStatus();
  LaunchKernel(ExpertWeightKernel, static_cast<unsigned>(act.shape[0]), 128, 0,
               act.data_as<float>(), static_cast<const int32_t*>(slots.data),
               topk_weight.data_as<float>(), act.shape[1], u.data_as<float>(), weighted_act.data,
               weighted_act.dtype == core::DType::kBF16, dweight.data_as<float>());
  return LaunchStatus("ExpertWeightBackward");
}

absl::Status ApeBackward(const core::TensorView& dscore, int64_t seq_len, int64_t ratio,
                         const core::TensorView& dape) {
  if (!F32(dscore) || dscore.rank != 2 || !F32(dape) || dape.rank != 2 || seq_len < 1 ||
      ratio < 1 || dape.shape[0] != ratio || dape.shape[1] != dscore.shape[1]) {
    return Bad("ApeBackward");
  }
  const int64_t width = dscore.shape[1], rows = dscore.shape[0];
  if (rows % seq_len != 0) return Bad("ApeBackward");
  const int64_t per_seq = (seq_len + ratio - 1) / ratio;
  const ApeGradValue value{dscore.data_as<float>(), seq_len, ratio, width, per_seq};
  return AddColumnSums("ApeBackward", value, rows / seq_len * per_seq, ratio * width,
                       dape.data_as<float>());
}

absl::Status EmbeddingBackward(const core::TensorView& dstreams, const core::TensorView& ids,
                               const core::TensorView& dembed) {
  if (!F32(dstreams) || dstreams.rank != 3 || !I32(ids) || ids.numel() != dstreams.shape[0] ||
      !F32(dembed) || dembed.rank != 2 || dembed.shape[1] != dstreams.shape[2]) {
    return Bad("EmbeddingBackward");
  }
  if (dstreams.shape[0] == 0) return absl::OkStatus();
  LaunchKernel(EmbeddingBackwardKernel, static_cast<unsigned>(dstreams.shape[0]), 128, 0,
               dstreams.data_as<float>(), static_cast<const int32_t*>(ids.data), dstreams.shape[1],
               dstreams.shape[2], dembed.data_as<float>());
  return LaunchStatus("EmbeddingBackward");
}

}  // namespace v4rl::kernels::cuda
