#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mhc.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxMixes = (2 + kMaxHcMult) * kMaxHcMult;
constexpr int kPreThreads = 256;

struct MhcPreParams {
  const void* streams;
  const void* fn;
  const float* base;
  const float* scale;
  float* pre;
  float* post;
  float* comb;
  void* collapsed;
  int64_t hidden;
  int n;
  int num_mixes;
  bool head;  // hc_head: pre gate only
  bool streams_bf16, fn_bf16, collapsed_bf16;
  float norm_eps, hc_eps;
  int sinkhorn_iters;
};

__device__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// kernels/cpu/mhc.cc SinkhornRef, on one thread: row softmax + eps, column normalisation, then
// (iters - 1) rounds of rows then columns, eps in every denominator.
__device__ void Sinkhorn(float* m, int n, int iters, float eps) {
  for (int j = 0; j < n; ++j) {
    float mx = m[j * n];
    for (int k = 1; k < n; ++k) mx = fmaxf(mx, m[j * n + k]);
    float sum = 0.0f;
    for (int k = 0; k < n; ++k) {
      m[j * n + k] = expf(m[j * n + k] - mx);
      sum += m[j * n + k];
    }
    for (int k = 0; k < n; ++k) m[j * n + k] = m[j * n + k] / sum + eps;
  }
  for (int it = 0; it < iters; ++it) {
    if (it > 0) {
      for (int j = 0; j < n; ++j) {
        float sum = 0.0f;
        for (int k = 0; k < n; ++k) sum += m[j * n + k];
        for (int k = 0; k < n; ++k) m[j * n + k] /= sum + eps;
      }
    }
    for (int k = 0; k < n; ++k) {
      float sum = 0.0f;
      for (int j = 0; j < n; ++j) sum += m[j * n + k];
      for (int j = 0; j < n; ++j) m[j * n + k] /= sum + eps;
    }
  }
}

// One block per token.
__global__ void __launch_bounds__(kPreThreads) MhcPreKernel(MhcPreParams p) {
  __shared__ float scratch[32];
  __shared__ float partial[kPreThreads / 32][kMaxMixes];
  __shared__ float mixes[kMaxMixes];
  __shared__ float pre[kMaxHcMult];
  const int64_t t = blockIdx.x;
  const int64_t width = p.n * p.hidden;
  const int64_t x0 = t * width;
  // 1. RMS of the token's n·H values, and the unnormalised dot products with every fn row.
  float sum_sq = 0.0f;
  float acc[kMaxMixes];
#pragma unroll
  for (int m = 0; m < kMaxMixes; ++m) acc[m] = 0.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float v = LoadF(p.streams, p.streams_bf16, x0 + c);
    sum_sq += v * v;
#pragma unroll
    for (int m = 0; m < kMaxMixes; ++m) {
      if (m < p.num_mixes) acc[m] += v * LoadF(p.fn, p.fn_bf16, m * width + c);
    }
  }
  const float inv = 1.0f / sqrtf(BlockSum(sum_sq, scratch) / static_cast<float>(width) + p.norm_eps);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int m = 0; m < kMaxMixes; ++m) {
    const float s = WarpSum(acc[m]);
    if (lane == 0) partial[warp][m] = s;
  }
  __syncthreads();
  if (threadIdx.x < p.num_mixes) {
    float s = 0.0f;
    for (int w = 0; w < kPreThreads / 32; ++w) s += partial[w][threadIdx.x];
    // (Σ x·fn) / rms equals normed · fn up to rounding.
    mixes[threadIdx.x] = s * inv;
  }
  __syncthreads();
  // 2. Gates and Sinkhorn on one thread (n <= 4: a few hundred flops).
  if (threadIdx.x == 0) {
    const int n = p.n;
    for (int j = 0; j < n; ++j) {
      pre[j] = Sigmoid(mixes[j] * p.scale[0] + p.base[j]) + p.hc_eps;
      p.pre[t * n + j] = pre[j];
    }
    if (!p.head) {
      for (int j = 0; j < n; ++j) {
        p.post[t * n + j] = 2.0f * Sigmoid(mixes[n + j] * p.scale[1] + p.base[n + j]);
      }
      float c[kMaxHcMult * kMaxHcMult];
      for (int e = 0; e < n * n; ++e) c[e] = mixes[2 * n + e] * p.scale[2] + p.base[2 * n + e];
      Sinkhorn(c, n, p.sinkhorn_iters, p.hc_eps);
      for (int e = 0; e < n * n; ++e) p.comb[t * n * n + e] = c[e];
    }
  }
  __syncthreads();
  // 3. Collapse: Σ_j pre_j · X_j, stream 0 first.
  for (int64_t h = threadIdx.x; h < p.hidden; h += blockDim.x) {
    float sum = 0.0f;
    for (int j = 0; j < p.n; ++j) sum += pre[j] * LoadF(p.streams, p.streams_bf16, x0 + j * p.hidden + h);
    StoreF(p.collapsed, p.collapsed_bf16, t * p.hidden + h, sum);
  }
}

struct MhcPostParams {
  const void* streams;
  const void* y;
  const float* post;
  const float* comb;
  void* out;
  int64_t num_tokens, hidden;
  int n;
  bool streams_bf16, y_bf16, out_bf16;
};

// One thread per (token, channel): all n output streams from the n inputs.
__global__ void MhcPostKernel(MhcPostParams p) {
  const int64_t total = p.num_tokens * p.hidden;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = e / p.hidden, h = e % p.hidden;
    const int n = p.n;
    float x[kMaxHcMult];
    for (int j = 0; j < n; ++j) x[j] = LoadF(p.streams, p.streams_bf16, (t * n + j) * p.hidden + h);
    const float yv = LoadF(p.y, p.y_bf16, e);
    const float* c = p.comb + t * n * n;
    for (int k = 0; k < n; ++k) {
      float mixed = 0.0f;
      for (int j = 0; j < n; ++j) mixed += c[j * n + k] * x[j];
      StoreF(p.out, p.out_bf16, (t * n + k) * p.hidden + h, p.post[t * n + k] * yv + mixed);
    }
  }
}

absl::Status LaunchPre(const MhcPreArgs& a, bool head) {
  const char* op = head ? "cuda::HcHeadPre" : "cuda::MhcPre";
  using core::DType;
  if (absl::Status s = CheckDeviceView(op, "streams", a.streams, {DType::kBF16, DType::kF32});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckArg(a.streams.rank == 3 && a.streams.shape[1] >= 1 &&
                                    a.streams.shape[1] <= kMaxHcMult,
                                op, "streams must be [N, n, H] with 1 <= n <= 4");
      !s.ok()) {
    return s;
  }
  const int64_t num_tokens = a.streams.shape[0], n = a.streams.shape[1],
                hidden = a.streams.shape[2];
  const int64_t num_mixes = head ? n : (2 + n) * n;
  std::initializer_list<std::pair<const char*, const core::TensorView*>> f32_views = {
      {"base", &a.base}, {"scale", &a.scale}, {"pre", &a.pre}};
  for (const auto& [name, v] : f32_views) {
    if (absl::Status s = CheckDeviceView(op, name, *v, {DType::kF32}); !s.ok()) return s;
  }
  if (absl::Status s = CheckDeviceView(op, "fn", a.fn, {DType::kF32, DType::kBF16}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckDeviceView(op, "collapsed", a.collapsed, {DType::kBF16, DType::kF32});
      !s.ok()) {
    return s;
  }
  for (absl::Status s : {CheckViewShape(op, "fn", a.fn, {num_mixes, n * hidden}),
                         CheckViewShape(op, "base", a.base, {num_mixes}),
                         CheckViewShape(op, "scale", a.scale, {head ? 1 : 3}),
                         CheckViewShape(op, "pre", a.pre, {num_tokens, n}),
                         CheckViewShape(op, "collapsed", a.collapsed, {num_tokens, hidden})}) {
    if (!s.ok()) return s;
  }
  MhcPreParams p{};
  if (!head) {
    if (absl::Status s = CheckDeviceView(op, "post", a.post, {DType::kF32}); !s.ok()) return s;
    if (absl::Status s = CheckDeviceView(op, "comb", a.comb, {DType::kF32}); !s.ok()) return s;
    if (absl::Status s = CheckViewShape(op, "post", a.post, {num_tokens, n}); !s.ok()) return s;
    if (absl::Status s = CheckViewShape(op, "comb", a.comb, {num_tokens, n, n}); !s.ok()) return s;
    if (absl::Status s = CheckArg(a.sinkhorn_iters >= 1, op, "sinkhorn_iters must be >= 1");
        !s.ok()) {
      return s;
    }
    p.post = a.post.data_as<float>();
    p.comb = a.comb.data_as<float>();
  }
  p.streams = a.streams.data;
  p.fn = a.fn.data;
  p.base = a.base.data_as<float>();
  p.scale = a.scale.data_as<float>();
  p.pre = a.pre.data_as<float>();
  p.collapsed = a.collapsed.data;
  p.hidden = hidden;
  p.n = static_cast<int>(n);
  p.num_mixes = static_cast<int>(num_mixes);
  p.head = head;
  p.streams_bf16 = IsBf16(a.streams);
  p.fn_bf16 = IsBf16(a.fn);
  p.collapsed_bf16 = IsBf16(a.collapsed);
  p.norm_eps = a.norm_eps;
  p.hc_eps = a.hc_eps;
  p.sinkhorn_iters = static_cast<int>(a.sinkhorn_iters);
  if (num_tokens == 0) return absl::OkStatus();
  MhcPreKernel<<<static_cast<unsigned>(num_tokens), kPreThreads>>>(p);
  return LaunchStatus(op);
}

}  // namespace

absl::Status MhcPre(const MhcPreArgs& args) { return LaunchPre(args, /*head=*/false); }
absl::Status HcHeadPre(const MhcPreArgs& args) { return LaunchPre(args, /*head=*/true); }

absl::Status MhcPost(const core::TensorView& streams, const core::TensorView& y,
                     const core::TensorView& post, const core::TensorView& comb,
                     const core::TensorView& out) {
  const char* op = "cuda::MhcPost";
  using core::DType;
  for (const auto& [name, v] : {std::pair{"streams", &streams}, std::pair{"y", &y},
                                std::pair{"out", &out}}) {
    if (absl::Status s = CheckDeviceView(op, name, *v, {DType::kBF16, DType::kF32}); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckDeviceView(op, "post", post, {DType::kF32}); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "comb", comb, {DType::kF32}); !s.ok()) return s;
  if (absl::Status s = CheckArg(streams.rank == 3 && streams.shape[1] >= 1 &&
                                    streams.shape[1] <= kMaxHcMult && out.data != streams.data,
                                op, "streams must be [N, n, H] with n <= 4, distinct from out");
      !s.ok()) {
    return s;
  }
  const int64_t num_tokens = streams.shape[0], n = streams.shape[1], hidden = streams.shape[2];
  for (absl::Status s : {CheckViewShape(op, "y", y, {num_tokens, hidden}),
                         CheckViewShape(op, "post", post, {num_tokens, n}),
                         CheckViewShape(op, "comb", comb, {num_tokens, n, n}),
                         CheckViewShape(op, "out", out, {num_tokens, n, hidden})}) {
    if (!s.ok()) return s;
  }
  MhcPostParams p{streams.data, y.data, post.data_as<float>(), comb.data_as<float>(), out.data,
                  num_tokens, hidden, static_cast<int>(n), IsBf16(streams), IsBf16(y), IsBf16(out)};
  const int64_t total = num_tokens * hidden;
  if (total == 0) return absl::OkStatus();
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, int64_t{1} << 16));
  MhcPostKernel<<<blocks, 256>>>(p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
