#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mhc_backward.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxN = 4;
constexpr int kMaxIters = 32;

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// y = x / (line sums + eps) along rows (by_rows) or columns.
__device__ void Normalize(const float* x, int n, float eps, bool by_rows, float* y) {
  for (int a = 0; a < n; ++a) {
    float sum = 0;
    for (int b = 0; b < n; ++b) sum += by_rows ? x[a * n + b] : x[b * n + a];
    const float denom = sum + eps;
    for (int b = 0; b < n; ++b) {
      const int at = by_rows ? a * n + b : b * n + a;
      y[at] = x[at] / denom;
    }
  }
}

__device__ void NormalizeBackward(const float* x, int n, float eps, bool by_rows, float* grad) {
  for (int a = 0; a < n; ++a) {
    float sum = 0, dot = 0;
    for (int b = 0; b < n; ++b) {
      const int at = by_rows ? a * n + b : b * n + a;
      sum += x[at];
      dot += grad[at] * x[at];
    }
    const float denom = sum + eps;
    for (int b = 0; b < n; ++b) {
      const int at = by_rows ? a * n + b : b * n + a;
      grad[at] = grad[at] / denom - dot / (denom * denom);
    }
  }
}

// dlogits (n x n) += d Sinkhorn(logits) given dmatrix; kernels/cpu/mhc_backward.cc's order.
__device__ void SinkhornBackward(const float* logits, int n, int iters, float eps,
                                 const float* dmatrix, float* dlogits) {
  const int nn = n * n;
  const int num_norms = 2 * iters - 1;
  float states[(2 * kMaxIters) * kMaxN * kMaxN];
  float* softmax = states;
  for (int j = 0; j < n; ++j) {
    float mx = -INFINITY;
    for (int k = 0; k < n; ++k) mx = fmaxf(mx, logits[j * n + k]);
    float sum = 0;
    for (int k = 0; k < n; ++k) {
      softmax[j * n + k] = expf(logits[j * n + k] - mx);
      sum += softmax[j * n + k];
    }
    for (int k = 0; k < n; ++k) softmax[j * n + k] /= sum;
  }
  for (int e = 0; e < nn; ++e) states[nn + e] = softmax[e] + eps;
  for (int s = 0; s + 1 < num_norms; ++s) {
    Normalize(states + (s + 1) * nn, n, eps, s % 2 == 1, states + (s + 2) * nn);
  }
  float grad[kMaxN * kMaxN];
  for (int e = 0; e < nn; ++e) grad[e] = dmatrix[e];
  for (int s = num_norms - 1; s >= 0; --s) {
    NormalizeBackward(states + (s + 1) * nn, n, eps, s % 2 == 1, grad);
  }
  for (int j = 0; j < n; ++j) {
    float dot = 0;
    for (int k = 0; k < n; ++k) dot += grad[j * n + k] * softmax[j * n + k];
    for (int k = 0; k < n; ++k) dlogits[j * n + k] += softmax[j * n + k] * (grad[j * n + k] - dot);
  }
}

__device__ __forceinline__ int Group(int e, int n) { return e / n < 2 ? e / n : 2; }

// One thread per token: dz (the gate/Sinkhorn logit gradients) into row t of `dz` [tokens,
// width + groups], followed by the token's group sums Σ_{e in g} dz·mixes (the scale gradient's
// terms); dmixes += dz·scale.
__global__ void CoefficientsKernel(const float* mixes, const float* base, const float* scale,
                                   int64_t tokens, int n, int iters, float eps, const float* dpre,
                                   const float* dpost, const float* dcomb, float* dz,
                                   float* dmixes, bool head) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const int width = head ? n : (2 + n) * n;
  const int groups = head ? 1 : 3;
  const float* m = mixes + t * width;
  float* z = dz + t * (width + groups);
  for (int j = 0; j < n; ++j) {
    const float sp = Sigmoid(m[j] * scale[0] + base[j]);
    z[j] = dpre[t * n + j] * sp * (1.0f - sp);
  }
  if (!head) {
    for (int j = 0; j < n; ++j) {
      const float sq = Sigmoid(m[n + j] * scale[1] + base[n + j]);
      z[n + j] = dpost[t * n + j] * 2.0f * sq * (1.0f - sq);
    }
    float logits[kMaxN * kMaxN], dlogits[kMaxN * kMaxN];
    for (int e = 0; e < n * n; ++e) {
      logits[e] = m[2 * n + e] * scale[2] + base[2 * n + e];
      dlogits[e] = 0.0f;
    }
    SinkhornBackward(logits, n, iters, eps, dcomb + t * n * n, dlogits);
    for (int e = 0; e < n * n; ++e) z[2 * n + e] = dlogits[e];
  }
  float group_sums[3] = {};
  for (int e = 0; e < width; ++e) {
    dmixes[t * width + e] += z[e] * scale[Group(e, n)];
    group_sums[Group(e, n)] += z[e] * m[e];
  }
  for (int g = 0; g < groups; ++g) z[width + g] = group_sums[g];
}

// Column `first + c` of the [tokens, ld] rows (AddColumnSums' value): dbase[e] += Σ_t dz[t, e]
// and dscale[g] += Σ_t (token t's group sum g).
struct DzColumnValue {
  const float* dz;
  int ld, first;
  __device__ float operator()(int64_t t, int64_t c) const { return dz[t * ld + first + c]; }
};

// W consecutive values from element i: Load8 (W = 8; Vec8Ok buffers) or one LoadF.
template <int W>
__device__ __forceinline__ void LoadW(const void* p, bool bf16, int64_t i, float (&v)[W]) {
  if constexpr (W == 8) {
    Load8(p, bf16, i, v);
  } else {
    v[0] = LoadF(p, bf16, i);
  }
}
template <int W>
__device__ __forceinline__ void StoreW(float* p, int64_t i, const float (&v)[W]) {
  if constexpr (W == 8) {
    Store8(p, false, i, v);
  } else {
    p[i] = v[0];
  }
}

// One block per token, W consecutive channels a thread per step. N (the stream count) is a
// template parameter so that the per-stream sums stay in registers (indexing them by a runtime n
// put them in local memory).
template <int N, int W>
__global__ void CollapseBackwardKernel(const void* streams, bool streams_bf16, const float* pre,
                                       const void* dout, bool dout_bf16, int64_t hidden,
                                       float* dstreams, float* dpre) {
  __shared__ float scratch[32 * N];
  const int64_t t = blockIdx.x;
  float weight[N], dot[N] = {};
#pragma unroll
  for (int j = 0; j < N; ++j) weight[j] = pre[t * N + j];
  for (int64_t h = int64_t(threadIdx.x) * W; h < hidden; h += int64_t(blockDim.x) * W) {
    float g[W];
    LoadW<W>(dout, dout_bf16, t * hidden + h, g);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int64_t at = (t * N + j) * hidden + h;
      float x[W], d[W];
      LoadW<W>(streams, streams_bf16, at, x);
      LoadW<W>(dstreams, false, at, d);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        d[i] += weight[j] * g[i];
        dot[j] += g[i] * x[i];
      }
      StoreW<W>(dstreams, at, d);
    }
  }
  BlockSumsAddTo(dot, N, scratch, dpre + t * N);
}

template <int N, int W>
__global__ void ExpandBackwardKernel(const void* streams, bool streams_bf16, const void* y,
                                     bool y_bf16, const float* post, const float* comb,
                                     const void* dout, bool dout_bf16, int64_t hidden,
                                     float* dstreams, float* dy, float* dpost, float* dcomb) {
  __shared__ float scratch[32 * N * N];
  const int64_t t = blockIdx.x;
  float p[N], c[N * N], post_dot[N] = {}, comb_dot[N * N] = {};
#pragma unroll
  for (int k = 0; k < N; ++k) p[k] = post[t * N + k];
#pragma unroll
  for (int e = 0; e < N * N; ++e) c[e] = comb[t * N * N + e];
  for (int64_t h = int64_t(threadIdx.x) * W; h < hidden; h += int64_t(blockDim.x) * W) {
    float g[N][W], yv[W], dyv[W];
    LoadW<W>(y, y_bf16, t * hidden + h, yv);
    LoadW<W>(dy, false, t * hidden + h, dyv);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      LoadW<W>(dout, dout_bf16, (t * N + k) * hidden + h, g[k]);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        dyv[i] += p[k] * g[k][i];
        post_dot[k] += g[k][i] * yv[i];
      }
    }
    StoreW<W>(dy, t * hidden + h, dyv);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int64_t at = (t * N + j) * hidden + h;
      float x[W], d[W];
      LoadW<W>(streams, streams_bf16, at, x);
      LoadW<W>(dstreams, false, at, d);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        float dx = 0;
#pragma unroll
        for (int k = 0; k < N; ++k) {
          dx += c[j * N + k] * g[k][i];
          comb_dot[j * N + k] += g[k][i] * x[i];
        }
        d[i] += dx;
      }
      StoreW<W>(dstreams, at, d);
    }
  }
  BlockSumsAddTo(post_dot, N, scratch, dpost + t * N);
  BlockSumsAddTo(comb_dot, N * N, scratch, dcomb + t * N * N);
}

// Calls f(std::integral_constant<int, n>) for the runtime stream count n (1 .. kMaxN), so that
// launchers pick the kernel instantiation of that N.
template <typename F>
void WithStreamCount(int64_t n, F&& f) {
  switch (n) {
    case 1:
      f(std::integral_constant<int, 1>());
      break;
    case 2:
      f(std::integral_constant<int, 2>());
      break;
    case 3:
      f(std::integral_constant<int, 3>());
      break;
    default:
      f(std::integral_constant<int, kMaxN>());
      break;
  }
}

bool F32(const core::TensorView& v, absl::Span<const int64_t> shape) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.dtype == core::DType::kF32 &&
         v.is_contiguous() && v.SameShape(shape);
}
bool Any(const core::TensorView& v, absl::Span<const int64_t> shape) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         (v.dtype == core::DType::kF32 || v.dtype == core::DType::kBF16) && v.SameShape(shape);
}
bool Bf16(const core::TensorView& v) { return v.dtype == core::DType::kBF16; }

absl::Status RunCoefficients(const char* op, bool head, const core::TensorView& mixes,
                             const core::TensorView& base, const core::TensorView& scale,
                             int64_t iters, float eps, const core::TensorView& dpre,
                             const core::TensorView& dpost, const core::TensorView& dcomb,
                             const core::TensorView& dmixes, const core::TensorView& dbase,
                             const core::TensorView& dscale) {
  const int64_t tokens = dpre.rank == 2 ? dpre.shape[0] : -1;
  const int64_t n = dpre.rank == 2 ? dpre.shape[1] : -1;
  const int64_t width = head ? n : (2 + n) * n;
  const int64_t groups = head ? 1 : 3;
  bool ok = n >= 1 && n <= kMaxN && F32(dpre, {tokens, n}) && F32(mixes, {tokens, width}) &&
            F32(base, {width}) && F32(scale, {groups}) && F32(dmixes, {tokens, width}) &&
            F32(dbase, {width}) && F32(dscale, {groups});
  if (!head) {
    ok = ok && iters >= 1 && iters <= kMaxIters && F32(dpost, {tokens, n}) &&
         F32(dcomb, {tokens, n, n});
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: mixes %s, base %s, scale %s, dpre %s, dpost %s, dcomb %s, dmixes %s, dbase %s, "
        "dscale %s do not fit (n <= %d, iters <= %d)", op, mixes.DebugString(),
        base.DebugString(), scale.DebugString(), dpre.DebugString(), dpost.DebugString(),
        dcomb.DebugString(), dmixes.DebugString(), dbase.DebugString(), dscale.DebugString(),
        kMaxN, kMaxIters));
  }
  if (tokens == 0) return absl::OkStatus();
  float* dz = nullptr;  // [tokens, width + groups]
  const int ld = int(width + groups);
  if (cudaMallocAsync(reinterpret_cast<void**>(&dz), tokens * ld * sizeof(float), 0) !=
      cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrFormat("%s: cudaMallocAsync failed", op));
  }
  // One warp a block: each thread keeps its token's Sinkhorn states (up to 4 KB) in local
  // memory, so tokens spread over every SM keep them in L1 (blocks of 128 threads put 4,096
  // tokens on 32 SMs).
  constexpr int kCoefficientThreads = 32;
  CoefficientsKernel<<<(tokens + kCoefficientThreads - 1) / kCoefficientThreads,
                       kCoefficientThreads>>>(
      mixes.data_as<float>(), base.data_as<float>(), scale.data_as<float>(), tokens, int(n),
      int(iters), eps, dpre.data_as<float>(), head ? nullptr : dpost.data_as<float>(),
      head ? nullptr : dcomb.data_as<float>(), dz, dmixes.data_as<float>(), head);
  absl::Status status = LaunchStatus(op);
  if (status.ok()) {
    status.Update(
        AddColumnSums(op, DzColumnValue{dz, ld, 0}, tokens, width, dbase.data_as<float>()));
  }
  if (status.ok()) {
    status.Update(AddColumnSums(op, DzColumnValue{dz, ld, int(width)}, tokens, groups,
                                dscale.data_as<float>()));
  }
  cudaFreeAsync(dz, 0);
  return status;
}

int Threads(int64_t hidden) { return hidden >= 256 ? 256 : 128; }

}  // namespace

absl::Status MhcCoefficientsBackward(const core::TensorView& mixes, const core::TensorView& base,
                                     const core::TensorView& scale, int64_t sinkhorn_iters,
                                     float eps, const core::TensorView& dpre,
                                     const core::TensorView& dpost, const core::TensorView& dcomb,
                                     const core::TensorView& dmixes, const core::TensorView& dbase,
                                     const core::TensorView& dscale) {
  return RunCoefficients("MhcCoefficientsBackward", false, mixes, base, scale, sinkhorn_iters, eps,
                         dpre, dpost, dcomb, dmixes, dbase, dscale);
}

absl::Status HcHeadPreBackward(const core::TensorView& mixes, const core::TensorView& base,
                               const core::TensorView& scale, const core::TensorView& dpre,
                               const core::TensorView& dmixes, const core::TensorView& dbase,
                               const core::TensorView& dscale) {
  return RunCoefficients("HcHeadPreBackward", true, mixes, base, scale, 1, 0.0f, dpre,
                         core::TensorView(), core::TensorView(), dmixes, dbase, dscale);
}

absl::Status MhcCollapseBackward(const core::TensorView& streams, const core::TensorView& pre,
                                 const core::TensorView& dout, const core::TensorView& dstreams,
                                 const core::TensorView& dpre) {
  const bool shaped = streams.rank == 3;
  const int64_t tokens = shaped ? streams.shape[0] : -1, n = shaped ? streams.shape[1] : -1,
                hidden = shaped ? streams.shape[2] : -1;
  if (!shaped || n < 1 || n > kMaxN || !Any(streams, {tokens, n, hidden}) ||
      !F32(pre, {tokens, n}) || !Any(dout, {tokens, hidden}) ||
      !F32(dstreams, {tokens, n, hidden}) || !F32(dpre, {tokens, n}) ||
      dstreams.data == streams.data) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MhcCollapseBackward: streams %s, pre %s, dout %s, dstreams %s, dpre %s do not fit",
        streams.DebugString(), pre.DebugString(), dout.DebugString(), dstreams.DebugString(),
        dpre.DebugString()));
  }
  if (tokens == 0) return absl::OkStatus();
  const bool vec8 =
      Vec8Ok(streams.data, hidden) && Vec8Ok(dout.data, hidden) && Vec8Ok(dstreams.data, hidden);
  WithStreamCount(n, [&](auto n_constant) {
    constexpr int kN = decltype(n_constant)::value;
    auto* kernel = vec8 ? CollapseBackwardKernel<kN, 8> : CollapseBackwardKernel<kN, 1>;
    kernel<<<tokens, Threads(hidden)>>>(streams.data, Bf16(streams), pre.data_as<float>(),
                                        dout.data, Bf16(dout), hidden, dstreams.data_as<float>(),
                                        dpre.data_as<float>());
  });
  return LaunchStatus("MhcCollapseBackward");
}

absl::Status MhcExpandBackward(const core::TensorView& streams, const core::TensorView& y,
                               const core::TensorView& post, const core::TensorView& comb,
                               const core::TensorView& dout, const core::TensorView& dstreams,
                               const core::TensorView& dy, const core::TensorView& dpost,
                               const core::TensorView& dcomb) {
  const bool shaped = streams.rank == 3;
  const int64_t tokens = shaped ? streams.shape[0] : -1, n = shaped ? streams.shape[1] : -1,
                hidden = shaped ? streams.shape[2] : -1;
  if (!shaped || n < 1 || n > kMaxN || !Any(streams, {tokens, n, hidden}) ||
      !Any(y, {tokens, hidden}) || !F32(post, {tokens, n}) || !F32(comb, {tokens, n, n}) ||
      !Any(dout, {tokens, n, hidden}) || !F32(dstreams, {tokens, n, hidden}) ||
      !F32(dy, {tokens, hidden}) || !F32(dpost, {tokens, n}) || !F32(dcomb, {tokens, n, n}) ||
      dstreams.data == dout.data || dstreams.data == streams.data) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MhcExpandBackward: streams %s, y %s, post %s, comb %s, dout %s, dstreams %s, dy %s, "
        "dpost %s, dcomb %s do not fit", streams.DebugString(), y.DebugString(),
        post.DebugString(), comb.DebugString(), dout.DebugString(), dstreams.DebugString(),
        dy.DebugString(), dpost.DebugString(), dcomb.DebugString()));
  }
  if (tokens == 0) return absl::OkStatus();
  const bool vec8 = Vec8Ok(streams.data, hidden) && Vec8Ok(y.data, hidden) &&
                    Vec8Ok(dout.data, hidden) && Vec8Ok(dstreams.data, hidden) &&
                    Vec8Ok(dy.data, hidden);
  WithStreamCount(n, [&](auto n_constant) {
    constexpr int kN = decltype(n_constant)::value;
    auto* kernel = vec8 ? ExpandBackwardKernel<kN, 8> : ExpandBackwardKernel<kN, 1>;
    kernel<<<tokens, Threads(hidden)>>>(
        streams.data, Bf16(streams), y.data, Bf16(y), post.data_as<float>(), comb.data_as<float>(),
        dout.data, Bf16(dout), hidden, dstreams.data_as<float>(), dy.data_as<float>(),
        dpost.data_as<float>(), dcomb.data_as<float>());
  });
  return LaunchStatus("MhcExpandBackward");
}

}  // namespace v4rl::kernels::cuda
