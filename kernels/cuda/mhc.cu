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
// MhcPreKernel's block: kPreThreads stream threads and one coefficient warp.
constexpr int kPreThreads = 256;
constexpr int kPreWarps = kPreThreads / 32;
constexpr int kPreBlock = kPreThreads + 32;
static_assert(kMaxMixes <= 32, "the coefficient warp holds one mix a lane");

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

// One block per token, in two roles (warp specialisation):
//  - warps 0-7 (kPreThreads threads), the stream warps: pass 1 over the token's n·H values (their
//    sum of squares and, without p.raw, their dot products with the fn rows), then the collapse
//    Σ_j pre_j · X_j and the fused RMSNorm;
//  - warp 8, the coefficient warp: the gates pre and post and the Sinkhorn projection comb,
//    written to p.pre, p.post and p.comb.
// Why: the collapse needs pre only, while comb (20 Sinkhorn rounds of shuffles and IEEE
// divisions, 2-3 µs) is for MhcPost; on one warp among the stream warps it sat between pass 1 and
// the collapse, every other warp waiting at a barrier. Now it runs beside the collapse.
// The roles meet at one __syncthreads(), when pass 1 has left its per-warp sums in shared memory.
// From there each warp derives what it needs by itself: the rms (BlockSum's reduction order), and
// on lane m gate m, i.e. mix m · its scale + its base (each mix computed by one lane, in the same
// order in every warp). The stream warps' lanes j < n hold pre_j and shuffle it to the other
// lanes; their fused norm's block reduction synchronises only them (BlockSumOfFirstWarps, named
// barrier 1). The gates' operands (p.raw, base, scale) and the first norm weights are loaded ahead
// of the sums they wait for, so their latency hides behind pass 1 and the reduction.
// Bits: the arithmetic and order of the kernel in which warp 0 of the 256 threads also did the
// coefficients (pass 1 and the norm partitioned over 256 threads and reduced in BlockSum's order,
// so the fused norm keeps RmsNormKernel's bits for H >= 1,800).
__global__ void __launch_bounds__(kPreBlock, 2) MhcPreKernel(MhcPreParams p) {
  WaitForPriorKernels();
  __shared__ float scratch[32];  // pass 1's sums of squares, a stream warp's each
  // The fused norm's: the coefficient warp may still be reading scratch.
  __shared__ float norm_scratch[32];
  __shared__ float partial[kPreWarps][kMaxMixes];  // without p.raw: the dot products, per warp
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool coefficient_warp = warp == kPreWarps;
  const int n = p.n;
  const int64_t width = n * p.hidden;
  const int64_t x0 = t * width;
  // Lane m's gate (the coefficient warp: every mix; the stream warps: pre's n): its operands now,
  // used after pass 1.
  const bool has_gate = lane < (coefficient_warp ? p.num_mixes : n);
  float dot_hi = 0.0f, dot_lo = 0.0f, gate_scale = 0.0f, gate_base = 0.0f;
  if (has_gate) {
    gate_scale = p.scale[lane < n ? 0 : lane < 2 * n ? 1 : 2];  // pre, post, comb
    gate_base = p.base[lane];
    if (p.raw != nullptr) {
      const float* row = p.raw + t * 2 * p.num_mixes;
      dot_hi = row[lane];
      dot_lo = row[p.num_mixes + lane];
    }
  }
  // 1. Stream warps: the sum of squares of the token's values and, without p.raw, their dot
  // products with every fn row, summed per warp into shared memory.
  if (!coefficient_warp) {
    float sum_sq = 0.0f;
    float acc[kMaxMixes];
#pragma unroll
    for (int m = 0; m < kMaxMixes; ++m) acc[m] = 0.0f;
    const int64_t low = int64_t{p.num_mixes} * width;  // split fn: offset of the low parts
    if (p.raw != nullptr && p.vec) {
      for (int64_t c = 8 * threadIdx.x; c < width; c += 8 * kPreThreads) {
        float v[8];
        Load8(p.streams, p.streams_bf16, x0 + c, v);
#pragma unroll
        for (int k = 0; k < 8; ++k) sum_sq += v[k] * v[k];
      }
    }
    for (int64_t c = threadIdx.x; c < width && !(p.raw != nullptr && p.vec); c += kPreThreads) {
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
    sum_sq = WarpSum(sum_sq);
    if (lane == 0) scratch[warp] = sum_sq;
    if (p.raw == nullptr) {
#pragma unroll
      for (int m = 0; m < kMaxMixes; ++m) {
        if (m < p.num_mixes) {
          const float s = WarpSum(acc[m]);
          if (lane == 0) partial[warp][m] = s;
        }
      }
    }
  }
  __syncthreads();
  // 2. Every warp: the rms over the stream warps' sums (BlockSum's second stage), and lane m's
  // gate argument.
  const float total_sq = WarpSum(lane < kPreWarps ? scratch[lane] : 0.0f);
  const float inv = 1.0f / sqrtf(total_sq / static_cast<float>(width) + p.norm_eps);
  float gate = 0.0f;
  if (has_gate) {
    float dot = 0.0f;
    if (p.raw != nullptr) {
      dot = dot_hi + dot_lo;
    } else {
      for (int w = 0; w < kPreWarps; ++w) dot += partial[w][lane];
    }
    // (Σ x·fn) / rms equals normed · fn up to rounding.
    const float mix = dot * inv;
    gate = mix * gate_scale + gate_base;
  }
  // 3. The coefficient warp: pre and post from lanes [0, 2n), comb from the Sinkhorn of the
  // gates of lanes [2n, 2n + n²): on a half warp for n = 4 (both halves alike), else on lane 0.
  if (coefficient_warp) {
    if (lane < n) p.pre[t * n + lane] = Sigmoid(gate) + p.hc_eps;
    if (p.head) return;
    if (lane >= n && lane < 2 * n) p.post[t * n + lane - n] = 2.0f * Sigmoid(gate);
    if (n == 4) {
      const float v = SinkhornWarp4(__shfl_sync(0xffffffffu, gate, 2 * n + (lane & 15)),
                                    p.sinkhorn_iters, p.hc_eps);
      if (lane < 16) p.comb[t * 16 + lane] = v;
    } else {
      float c[kMaxHcMult * kMaxHcMult];
      for (int e = 0; e < n * n; ++e) c[e] = __shfl_sync(0xffffffffu, gate, 2 * n + e);
      if (lane == 0) {
        Sinkhorn(c, n, p.sinkhorn_iters, p.hc_eps);
        for (int e = 0; e < n * n; ++e) p.comb[t * n * n + e] = c[e];
      }
    }
    return;
  }
  // 4. Stream warps from here: every lane takes pre_j from lane j.
  const float own_pre = Sigmoid(gate) + p.hc_eps;  // lanes j < n: pre_j (the value p.pre gets)
  float pre[kMaxHcMult];
#pragma unroll
  for (int j = 0; j < kMaxHcMult; ++j) pre[j] = __shfl_sync(0xffffffffu, own_pre, j);
  // 5. Collapse: Σ_j pre_j · X_j, stream 0 first.
  if (p.vec) {
    auto collapse8 = [&](int64_t h, float(&sum)[8]) {
#pragma unroll
      for (int k = 0; k < 8; ++k) sum[k] = 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxHcMult; ++j) {
        if (j >= n) break;
        float v[8];
        Load8(p.streams, p.streams_bf16, x0 + j * p.hidden + h, v);
#pragma unroll
        for (int k = 0; k < 8; ++k) sum[k] += pre[j] * v[k];
      }
    };
    constexpr int64_t kStride = 8 * kPreThreads;
    if (p.norm_weight == nullptr) {
      for (int64_t h = 8 * threadIdx.x; h < p.hidden; h += kStride) {
        float sum[8];
        collapse8(h, sum);
        Store8(p.collapsed, p.collapsed_bf16, t * p.hidden + h, sum);
      }
      return;
    }
    // The fused RMSNorm: RmsNormKernel's arithmetic on the collapse as it would be stored (its
    // 8-wide partition of the row over 256 threads, so the same bits). The thread's first chunk
    // (at H = 2048 its only one) stays in registers across the reduction, with its norm weights
    // loaded before it; further chunks are recomputed after it (the streams are in cache).
    auto stored = [&](float v) {
      return p.collapsed_bf16 ? __bfloat162float(__float2bfloat16(v)) : v;
    };
    const int64_t h0 = 8 * threadIdx.x;
    float first[8], first_w[8];
    float collapse_sq = 0.0f;
    if (h0 < p.hidden) {
      Load8(p.norm_weight, p.norm_w_bf16, h0, first_w);
      collapse8(h0, first);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        first[k] = stored(first[k]);
        collapse_sq += first[k] * first[k];
      }
    }
    for (int64_t h = h0 + kStride; h < p.hidden; h += kStride) {
      float sum[8];
      collapse8(h, sum);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float v = stored(sum[k]);
        collapse_sq += v * v;
      }
    }
    const float collapse_inv =
        1.0f / sqrtf(BlockSumOfFirstWarps<kPreThreads, 1>(collapse_sq, norm_scratch) /
                         static_cast<float>(p.hidden) +
                     p.norm_eps);
    auto store_normed = [&](int64_t h, float(&v)[8], const float(&w)[8]) {
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = v[k] * collapse_inv * w[k];
      Store8(p.collapsed, p.collapsed_bf16, t * p.hidden + h, v);
    };
    if (h0 < p.hidden) store_normed(h0, first, first_w);
    for (int64_t h = h0 + kStride; h < p.hidden; h += kStride) {
      float sum[8], w[8];
      collapse8(h, sum);
      Load8(p.norm_weight, p.norm_w_bf16, h, w);
#pragma unroll
      for (int k = 0; k < 8; ++k) sum[k] = stored(sum[k]);
      store_normed(h, sum, w);
    }
    return;
  }
  for (int64_t h = threadIdx.x; h < p.hidden; h += kPreThreads) {
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxHcMult; ++j) {
      if (j >= n) break;
      sum += pre[j] * LoadF(p.streams, p.streams_bf16, x0 + j * p.hidden + h);
    }
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
// the n inputs; the token's coefficients are loaded once per thread (broadcast reads). The
// streams' dtype is a template argument (p.streams_bf16 == kBf16Streams): loads of a
// runtime-chosen width compile to branches that keep a thread's loads from being in flight
// together.
template <bool kBf16Streams>
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
      if (j < n) Load8(p.streams, kBf16Streams, (t * n + j) * p.hidden + h, x[j]);
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
    x[j] = LoadF(p.streams, kBf16Streams, (t * n + j) * p.hidden + h);
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
  LaunchKernel(MhcPreKernel, static_cast<unsigned>(num_tokens), kPreBlock, 0, p);
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
    LaunchKernel(p.streams_bf16 ? MhcPostKernel<true> : MhcPostKernel<false>, grid, 256, 0, chunk);
    if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
