#include <algorithm>

#include "core/dtype.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/mhc.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxMixes = (2 + kMaxHcMult) * kMaxHcMult;
constexpr int kPreThreads = 256;

struct MhcPreParams {
  const void* streams;
  const void* fn;
  const float* raw;  // [N, 2·M] f32 dot products of the split fn, or null: the kernel computes them
  const float* base;
  const float* scale;
  float* pre;
  float* post;
  float* comb;
  void* collapsed;
  const void* norm_weight;  // [H] or null: collapsed = RMSNorm(rounded collapse) · norm_weight
  int64_t hidden;
  int n;
  int num_mixes;
  bool head;  // hc_head: pre gate only
  bool streams_bf16, fn_bf16, collapsed_bf16, fn_split, norm_w_bf16;
  bool vec;  // 8-wide accesses to streams and collapsed (Vec8Ok)
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

// The same for n = 4 on the 16 lanes of a half warp, lane e holding m[e / 4][e % 4] (both halves
// of the warp compute the same): row sums over lane bits 0-1, column sums over bits 2-3 by
// butterfly shuffles, so every lane of a row or column holds the same sum. Summation order
// (m0 + m1) + (m2 + m3) instead of the CPU's left to right: differences of a few f32 ulps.
__device__ float SinkhornWarp4(float v, int iters, float eps) {
  auto sum_over = [](float x, int a, int b) {
    x += __shfl_xor_sync(0xffffffffu, x, a);
    return x + __shfl_xor_sync(0xffffffffu, x, b);
  };
  float mx = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  v = expf(v - mx);
  v = v / sum_over(v, 1, 2) + eps;
  for (int it = 0; it < iters; ++it) {
    if (it > 0) v /= sum_over(v, 1, 2) + eps;
    v /= sum_over(v, 4, 8) + eps;
  }
  return v;
}

// One block per token.
__global__ void __launch_bounds__(kPreThreads) MhcPreKernel(MhcPreParams p) {
  WaitForPriorKernels();
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
  const int64_t low = int64_t{p.num_mixes} * width;  // split fn: offset of the low parts
  if (p.raw != nullptr && p.vec) {
    for (int64_t c = 8 * threadIdx.x; c < width; c += 8 * blockDim.x) {
      float v[8];
      Load8(p.streams, p.streams_bf16, x0 + c, v);
#pragma unroll
      for (int k = 0; k < 8; ++k) sum_sq += v[k] * v[k];
    }
  }
  for (int64_t c = threadIdx.x; c < width && !(p.raw != nullptr && p.vec); c += blockDim.x) {
    const float v = LoadF(p.streams, p.streams_bf16, x0 + c);
    sum_sq += v * v;
    if (p.raw != nullptr) continue;
#pragma unroll
    for (int m = 0; m < kMaxMixes; ++m) {
      if (m < p.num_mixes) {
        float f = LoadF(p.fn, p.fn_bf16, m * width + c);
        if (p.fn_split) f += LoadF(p.fn, p.fn_bf16, low + m * width + c);
        acc[m] += v * f;
      }
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
    if (p.raw != nullptr) {
      const float* row = p.raw + t * 2 * p.num_mixes;
      s = row[threadIdx.x] + row[p.num_mixes + threadIdx.x];
    } else {
      for (int w = 0; w < kPreThreads / 32; ++w) s += partial[w][threadIdx.x];
    }
    // (Σ x·fn) / rms equals normed · fn up to rounding.
    mixes[threadIdx.x] = s * inv;
  }
  __syncthreads();
  // 2. Gates on the first n lanes; Sinkhorn on a half warp for n = 4, else on one thread.
  if (threadIdx.x < 32) {
    const int n = p.n, lane = threadIdx.x;
    if (lane < n) {
      pre[lane] = Sigmoid(mixes[lane] * p.scale[0] + p.base[lane]) + p.hc_eps;
      p.pre[t * n + lane] = pre[lane];
      if (!p.head) {
        p.post[t * n + lane] = 2.0f * Sigmoid(mixes[n + lane] * p.scale[1] + p.base[n + lane]);
      }
    }
    if (!p.head && n == 4) {
      const int e = lane & 15;
      const float v = SinkhornWarp4(mixes[2 * n + e] * p.scale[2] + p.base[2 * n + e],
                                    p.sinkhorn_iters, p.hc_eps);
      if (lane < 16) p.comb[t * 16 + e] = v;
    } else if (!p.head && lane == 0) {
      float c[kMaxHcMult * kMaxHcMult];
      for (int e = 0; e < n * n; ++e) c[e] = mixes[2 * n + e] * p.scale[2] + p.base[2 * n + e];
      Sinkhorn(c, n, p.sinkhorn_iters, p.hc_eps);
      for (int e = 0; e < n * n; ++e) p.comb[t * n * n + e] = c[e];
    }
  }
  __syncthreads();
  // 3. Collapse: Σ_j pre_j · X_j, stream 0 first.
  if (p.vec) {
    auto collapse8 = [&](int64_t h, float(&sum)[8]) {
#pragma unroll
      for (int k = 0; k < 8; ++k) sum[k] = 0.0f;
      for (int j = 0; j < p.n; ++j) {
        float v[8];
        Load8(p.streams, p.streams_bf16, x0 + j * p.hidden + h, v);
#pragma unroll
        for (int k = 0; k < 8; ++k) sum[k] += pre[j] * v[k];
      }
    };
    if (p.norm_weight == nullptr) {
      for (int64_t h = 8 * threadIdx.x; h < p.hidden; h += 8 * blockDim.x) {
        float sum[8];
        collapse8(h, sum);
        Store8(p.collapsed, p.collapsed_bf16, t * p.hidden + h, sum);
      }
      return;
    }
    // The fused RMSNorm: RmsNormKernel's arithmetic on the collapse as it would be stored (its
    // 8-wide partition of the row over the block, so with 256 threads the same bits); the
    // second pass recomputes the collapse (the streams are in cache) instead of keeping it.
    float collapse_sq = 0.0f;
    for (int64_t h = 8 * threadIdx.x; h < p.hidden; h += 8 * blockDim.x) {
      float sum[8];
      collapse8(h, sum);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float v = p.collapsed_bf16 ? __bfloat162float(__float2bfloat16(sum[k])) : sum[k];
        collapse_sq += v * v;
      }
    }
    const float collapse_inv =
        1.0f / sqrtf(BlockSum(collapse_sq, scratch) / static_cast<float>(p.hidden) + p.norm_eps);
    for (int64_t h = 8 * threadIdx.x; h < p.hidden; h += 8 * blockDim.x) {
      float sum[8], w[8];
      collapse8(h, sum);
      Load8(p.norm_weight, p.norm_w_bf16, h, w);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float v = p.collapsed_bf16 ? __bfloat162float(__float2bfloat16(sum[k])) : sum[k];
        sum[k] = v * collapse_inv * w[k];
      }
      Store8(p.collapsed, p.collapsed_bf16, t * p.hidden + h, sum);
    }
    return;
  }
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
  bool vec;  // 8 channels a thread (Vec8Ok on every buffer)
};

// Grid (channel blocks, tokens): each thread one channel of one token, all n output streams from
// the n inputs; the token's coefficients are loaded once per thread (broadcast reads).
__global__ void MhcPostKernel(MhcPostParams p) {
  WaitForPriorKernels();
  const int64_t t = blockIdx.y;
  const int64_t h = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * (p.vec ? 8 : 1);
  if (h >= p.hidden) return;
  const int n = p.n;
  if (p.vec) {  // loops over kMaxHcMult with guards keep x in registers
    float x[kMaxHcMult][8], y[8];
#pragma unroll
    for (int j = 0; j < kMaxHcMult; ++j) {
      if (j < n) Load8(p.streams, p.streams_bf16, (t * n + j) * p.hidden + h, x[j]);
    }
    Load8(p.y, p.y_bf16, t * p.hidden + h, y);
#pragma unroll
    for (int k = 0; k < kMaxHcMult; ++k) {
      if (k >= n) break;
      const float post_k = p.post[t * n + k];
      float out[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float mixed = 0.0f;
#pragma unroll
        for (int j = 0; j < kMaxHcMult; ++j) {
          if (j < n) mixed += p.comb[t * n * n + j * n + k] * x[j][e];
        }
        out[e] = post_k * y[e] + mixed;
      }
      Store8(p.out, p.out_bf16, (t * n + k) * p.hidden + h, out);
    }
    return;
  }
  float c[kMaxHcMult * kMaxHcMult], post[kMaxHcMult], x[kMaxHcMult];
#pragma unroll
  for (int j = 0; j < kMaxHcMult; ++j) {
    if (j >= n) break;
    post[j] = p.post[t * n + j];
    x[j] = LoadF(p.streams, p.streams_bf16, (t * n + j) * p.hidden + h);
#pragma unroll
    for (int k = 0; k < kMaxHcMult; ++k) {
      if (k < n) c[j * kMaxHcMult + k] = p.comb[t * n * n + j * n + k];
    }
  }
  const float yv = LoadF(p.y, p.y_bf16, t * p.hidden + h);
#pragma unroll
  for (int k = 0; k < kMaxHcMult; ++k) {
    if (k >= n) break;
    float mixed = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxHcMult; ++j) {
      if (j < n) mixed += c[j * kMaxHcMult + k] * x[j];
    }
    StoreF(p.out, p.out_bf16, (t * n + k) * p.hidden + h, post[k] * yv + mixed);
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
  if (absl::Status s = CheckArg(!a.fn_split || IsBf16(a.fn), op, "a split fn must be bf16");
      !s.ok()) {
    return s;
  }
  const int64_t fn_rows = a.fn_split ? 2 * num_mixes : num_mixes;
  for (absl::Status s : {CheckViewShape(op, "fn", a.fn, {fn_rows, n * hidden}),
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
  p.fn_split = a.fn_split;
  p.vec = Vec8Ok(a.streams.data, hidden) && Vec8Ok(a.collapsed.data, hidden);
  const bool fused_norm = a.norm_weight.data != nullptr;
  if (fused_norm) {
    if (absl::Status s =
            CheckDeviceView(op, "norm_weight", a.norm_weight, {DType::kF32, DType::kBF16});
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckViewShape(op, "norm_weight", a.norm_weight, {hidden}); !s.ok()) {
      return s;
    }
    // 8-wide only; otherwise RmsNorm runs after the kernel.
    if (p.vec && Vec8Ok(a.norm_weight.data, hidden)) {
      p.norm_weight = a.norm_weight.data;
      p.norm_w_bf16 = IsBf16(a.norm_weight);
    }
  }
  p.collapsed_bf16 = IsBf16(a.collapsed);
  p.norm_eps = a.norm_eps;
  p.hc_eps = a.hc_eps;
  p.sinkhorn_iters = static_cast<int>(a.sinkhorn_iters);
  if (num_tokens == 0) return absl::OkStatus();
  core::Tensor raw;  // the GEMM path's dot products; freed in stream order by the caching allocator
  if (a.gemm != nullptr && a.fn_split && p.streams_bf16) {
    raw = core::Tensor::Empty(DType::kF32, {num_tokens, 2 * num_mixes}, CachingDeviceAllocator());
    if (absl::Status s =
            Gemm(*a.gemm, a.streams.Reshape({num_tokens, n * hidden}), a.fn, raw.view());
        !s.ok()) {
      return s;
    }
    p.raw = raw.data<float>();
  }
  LaunchKernel(MhcPreKernel, static_cast<unsigned>(num_tokens), kPreThreads, 0, p);
  if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
  if (fused_norm && p.norm_weight == nullptr) {
    return RmsNorm(a.collapsed, a.norm_weight, a.norm_eps, a.collapsed);
  }
  return absl::OkStatus();
}

}  // namespace

core::Tensor SplitMhcFn(const core::TensorView& fn) {
  const core::Tensor f32 = core::ToFloat32(fn);
  const int64_t rows = fn.shape[0], cols = fn.shape[1];
  core::Tensor split = core::Tensor::Empty(core::DType::kBF16, {2 * rows, cols});
  uint16_t* out = split.data<uint16_t>();
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float value = f32.data<float>()[i];
    const uint16_t high = core::FloatToBf16(value);
    out[i] = high;
    out[rows * cols + i] = core::FloatToBf16(value - core::Bf16ToFloat(high));
  }
  return split;
}

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
  MhcPostParams p{
      streams.data,
      y.data,
      post.data_as<float>(),
      comb.data_as<float>(),
      out.data,
      num_tokens,
      hidden,
      static_cast<int>(n),
      IsBf16(streams),
      IsBf16(y),
      IsBf16(out),
      Vec8Ok(streams.data, hidden) && Vec8Ok(y.data, hidden) && Vec8Ok(out.data, hidden)};
  if (num_tokens * hidden == 0) return absl::OkStatus();
  // gridDim.y is at most 65535: tokens beyond go in further launches.
  for (int64_t first = 0; first < num_tokens; first += 65535) {
    MhcPostParams chunk = p;
    const int64_t count = std::min<int64_t>(65535, num_tokens - first);
    const int64_t sb = IsBf16(streams) ? 2 : 4, yb = IsBf16(y) ? 2 : 4, ob = IsBf16(out) ? 2 : 4;
    chunk.streams = static_cast<const char*>(p.streams) + first * n * hidden * sb;
    chunk.y = static_cast<const char*>(p.y) + first * hidden * yb;
    chunk.out = static_cast<char*>(p.out) + first * n * hidden * ob;
    chunk.post = p.post + first * n;
    chunk.comb = p.comb + first * n * n;
    chunk.num_tokens = count;
    const int64_t per_block = 256 * (p.vec ? 8 : 1);
    const dim3 grid(static_cast<unsigned>((hidden + per_block - 1) / per_block),
                    static_cast<unsigned>(count));
    LaunchKernel(MhcPostKernel, grid, 256, 0, chunk);
    if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
