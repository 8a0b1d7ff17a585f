#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mhc_backward.h"
#include "kernels/cuda/mhc_team.cuh"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxN = kMhcMaxN;
constexpr int kMaxIters = 32;

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Σ of v over the team (the lanes of one token), in a fixed shuffle tree.
__device__ __forceinline__ float TeamSum(float v) {
  for (int offset = kMhcTeam / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// One team per token (kMhcTeam lanes): the gate gradients (lanes e < n) and the Sinkhorn backward
// (lane e on matrix entry e: softmax, 2·iters - 1 line normalisations kept per lane, then their
// backward in reverse), written as dz row t [tokens, width + groups]: the logit gradients, then
// the token's group sums Σ_{e in g} dz·mixes (the scale gradient's terms); dmixes += dz·scale.
// kIters > 0: iters is kIters, the loops unrolled so the states stay in registers (with a runtime
// count, 0, they live in a 256-byte stack frame).
template <int kIters>
__global__ void CoefficientsKernel(const float* mixes, const float* base, const float* scale,
                                   int64_t tokens, int n, int iters, float eps, const float* dpre,
                                   const float* dpost, const float* dcomb, float* dz,
                                   float* dmixes, bool head) {
  WaitForPriorKernels();
  const int lane = threadIdx.x % 32, team_base = lane & ~(kMhcTeam - 1), e = lane - team_base;
  const int64_t t = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kMhcTeam;
  const bool live = t < tokens;
  const int64_t row = live ? t : tokens - 1;  // a team past the end reads a real row, writes none
  const int width = head ? n : (2 + n) * n, groups = head ? 1 : 3, nn = n * n;
  const float* m = mixes + row * width;
  float z_pre = 0, z_post = 0, z_comb = 0;
  if (e < n) {
    const float sp = Sigmoid(m[e] * scale[0] + base[e]);
    z_pre = dpre[row * n + e] * sp * (1.0f - sp);
    if (!head) {
      const float sq = Sigmoid(m[n + e] * scale[1] + base[n + e]);
      z_post = dpost[row * n + e] * 2.0f * sq * (1.0f - sq);
    }
  }
  if (!head) {  // uniform over the grid
    const bool entry = e < nn;
    const float logit = entry ? m[2 * n + e] * scale[2] + base[2 * n + e] : 0.0f;
    const float row_max = MhcLineReduce<true>(logit, e, n, true, team_base);
    const float exp_logit = expf(logit - row_max);
    const float softmax = exp_logit / MhcLineReduce<false>(exp_logit, e, n, true, team_base);
    // state[s]: this entry of the input of normalisation s (s < num_norms; row-wise when s is odd).
    const int num_norms = kIters > 0 ? 2 * kIters - 1 : 2 * iters - 1;
    constexpr int kUnroll = kIters > 0 ? 2 * kIters : 1;
    float state[kIters > 0 ? 2 * kIters : 2 * kMaxIters];
    state[0] = softmax + eps;
#pragma unroll kUnroll
    for (int s = 0; s + 1 < num_norms; ++s) {
      state[s + 1] = state[s] / (MhcLineReduce<false>(state[s], e, n, s % 2 == 1, team_base) + eps);
    }
    float grad = entry ? dcomb[row * nn + e] : 0.0f;
#pragma unroll kUnroll
    for (int s = num_norms - 1; s >= 0; --s) {
      const float x = state[s];
      const float denom = MhcLineReduce<false>(x, e, n, s % 2 == 1, team_base) + eps;
      const float dot = MhcLineReduce<false>(grad * x, e, n, s % 2 == 1, team_base);
      grad = grad / denom - dot / (denom * denom);
    }
    const float row_dot = MhcLineReduce<false>(grad * softmax, e, n, true, team_base);
    z_comb = softmax * (grad - row_dot);
  }
  const float pre_part = TeamSum(e < n ? z_pre * m[e] : 0.0f);
  const float post_part = head ? 0.0f : TeamSum(e < n ? z_post * m[n + e] : 0.0f);
  const float comb_part = head ? 0.0f : TeamSum(e < nn ? z_comb * m[2 * n + e] : 0.0f);
  if (!live) return;
  float* z = dz + row * (width + groups);
  float* dm = dmixes + row * width;
  if (e < n) {
    z[e] = z_pre;
    dm[e] += z_pre * scale[0];
    if (!head) {
      z[n + e] = z_post;
      dm[n + e] += z_post * scale[1];
    }
  }
  if (!head && e < nn) {
    z[2 * n + e] = z_comb;
    dm[2 * n + e] += z_comb * scale[2];
  }
  if (e == 0) {
    z[width] = pre_part;
    if (!head) {
      z[width + 1] = post_part;
      z[width + 2] = comb_part;
    }
  }
}

// Column `first + c` of the [tokens, ld] rows (AddColumnSums' value): dbase[e] += Σ_t dz[t, e]
// and dscale[g] += Σ_t (token t's group sum g).
struct DzColumnValue {
  const float* dz;
  int ld, first;
  __device__ float operator()(int64_t t, int64_t c) const { return dz[t * ld + first + c]; }
};

// v = p[i, i + W) (`add`: the gradient is added to), else zeros (overwritten: not read; 0 + the
// value keeps the bits of an add to a zero-filled buffer).
template <int W>
__device__ __forceinline__ void LoadOrZeroW(const float* p, int64_t i, bool add, float (&v)[W]) {
  if (add) {
    LoadW<W>(p, false, i, v);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = 0.0f;
  }
}

// rms_inv[t] = 1/sqrt(Σ over the block of sum_sq / width + eps), the stream RMS of token t
// (RmsNormBackward's), when rms_inv is given. `scratch`: 32 floats of shared memory.
__device__ __forceinline__ void StoreRmsInv(float sum_sq, int64_t width, float eps, float* scratch,
                                            float* rms_inv, int64_t t) {
  if (rms_inv == nullptr) return;  // uniform over the grid
  const float total = BlockSum(sum_sq, scratch);
  if (threadIdx.x == 0) rms_inv[t] = rsqrtf(total / float(width) + eps);
}

// One block per token, W consecutive channels a thread per step. N (the stream count) is a
// template parameter so that the per-stream sums stay in registers (indexing them by a runtime n
// put them in local memory); so is the streams' dtype (kBf16Streams), since loads of a
// runtime-chosen width compile to branches that keep a thread's loads from being in flight
// together.
template <bool kBf16Streams, int N, int W>
__global__ void CollapseBackwardKernel(const void* streams, const float* pre, const void* dout,
                                       bool dout_bf16, int64_t hidden, bool add_to_dstreams,
                                       float* dstreams, float* dpre, float* rms_inv, float eps) {
  WaitForPriorKernels();
  __shared__ float scratch[32 * N];
  const int64_t t = blockIdx.x;
  float weight[N], dot[N] = {}, sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) weight[j] = pre[t * N + j];
  for (int64_t h = int64_t(threadIdx.x) * W; h < hidden; h += int64_t(blockDim.x) * W) {
    float g[W];
    LoadW<W>(dout, dout_bf16, t * hidden + h, g);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int64_t at = (t * N + j) * hidden + h;
      float x[W], d[W] = {};
      LoadW<W>(streams, kBf16Streams, at, x);
      if (dstreams != nullptr) LoadOrZeroW<W>(dstreams, at, add_to_dstreams, d);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        d[i] = __fmaf_rn(weight[j], g[i], d[i]);
        dot[j] += g[i] * x[i];
        sum_sq += x[i] * x[i];
      }
      if (dstreams != nullptr) StoreW<W>(dstreams, false, at, d);
    }
  }
  BlockSumsAddTo(dot, N, scratch, dpre + t * N);
  StoreRmsInv(sum_sq, N * hidden, eps, scratch, rms_inv, t);
}

template <bool kBf16Streams, int N, int W>
__global__ void ExpandBackwardKernel(const void* streams, const void* y, bool y_bf16,
                                     const float* post, const float* comb, const void* dout,
                                     bool dout_bf16, int64_t hidden, bool add_to_grads,
                                     float* dstreams, void* dy, bool dy_bf16, float* dpost,
                                     float* dcomb, float* rms_inv, float eps) {
  WaitForPriorKernels();
  __shared__ float scratch[32 * N * N];
  const int64_t t = blockIdx.x;
  float p[N], c[N * N], post_dot[N] = {}, comb_dot[N * N] = {}, sum_sq = 0.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) p[k] = post[t * N + k];
#pragma unroll
  for (int e = 0; e < N * N; ++e) c[e] = comb[t * N * N + e];
  for (int64_t h = int64_t(threadIdx.x) * W; h < hidden; h += int64_t(blockDim.x) * W) {
    float g[N][W], yv[W], dyv[W];
    LoadW<W>(y, y_bf16, t * hidden + h, yv);
    LoadOrZeroW<W>(static_cast<const float*>(dy), t * hidden + h, add_to_grads, dyv);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      LoadW<W>(dout, dout_bf16, (t * N + k) * hidden + h, g[k]);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        dyv[i] += p[k] * g[k][i];
        post_dot[k] += g[k][i] * yv[i];
      }
    }
    StoreW<W>(dy, dy_bf16, t * hidden + h, dyv);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int64_t at = (t * N + j) * hidden + h;
      float x[W], d[W] = {};
      LoadW<W>(streams, kBf16Streams, at, x);
      if (dstreams != nullptr) LoadOrZeroW<W>(dstreams, at, add_to_grads, d);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        float dx = 0;
#pragma unroll
        for (int k = 0; k < N; ++k) {
          dx += c[j * N + k] * g[k][i];
          comb_dot[j * N + k] += g[k][i] * x[i];
        }
        d[i] += dx;
        sum_sq += x[i] * x[i];
      }
      if (dstreams != nullptr) StoreW<W>(dstreams, false, at, d);
    }
  }
  BlockSumsAddTo(post_dot, N, scratch, dpost + t * N);
  BlockSumsAddTo(comb_dot, N * N, scratch, dcomb + t * N * N);
  StoreRmsInv(sum_sq, N * hidden, eps, scratch, rms_inv, t);
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
  constexpr int kCoefficientThreads = 128;  // 8 tokens a block
  const int64_t threads_needed = tokens * kMhcTeam;
  // The V4 configs' 20 Sinkhorn iterations with the states in registers.
  constexpr int kUnrolledIters = 20;
  auto* kernel = iters == kUnrolledIters ? CoefficientsKernel<kUnrolledIters> : CoefficientsKernel<0>;
  LaunchKernel(kernel, (threads_needed + kCoefficientThreads - 1) / kCoefficientThreads,
               kCoefficientThreads, 0, mixes.data_as<float>(), base.data_as<float>(),
               scale.data_as<float>(), tokens, int(n), int(iters), eps, dpre.data_as<float>(),
               head ? nullptr : dpost.data_as<float>(), head ? nullptr : dcomb.data_as<float>(), dz,
               dmixes.data_as<float>(), head);
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
  return MhcCollapseBackward(streams, pre, dout, dstreams, dpre, DxWrite::kAdd);
}

absl::Status MhcCollapseBackward(const core::TensorView& streams, const core::TensorView& pre,
                                 const core::TensorView& dout, const core::TensorView& dstreams,
                                 const core::TensorView& dpre, DxWrite dstreams_write,
                                 const core::TensorView& rms_inv, float rms_eps) {
  const bool shaped = streams.rank == 3;
  const int64_t tokens = shaped ? streams.shape[0] : -1, n = shaped ? streams.shape[1] : -1,
                hidden = shaped ? streams.shape[2] : -1;
  if (!shaped || n < 1 || n > kMaxN || !Any(streams, {tokens, n, hidden}) ||
      !F32(pre, {tokens, n}) || !Any(dout, {tokens, hidden}) ||
      !(dstreams.data == nullptr || F32(dstreams, {tokens, n, hidden})) ||
      !F32(dpre, {tokens, n}) || dstreams.data == streams.data ||
      !(rms_inv.data == nullptr || F32(rms_inv, {tokens}))) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MhcCollapseBackward: streams %s, pre %s, dout %s, dstreams %s, dpre %s, rms_inv %s do "
        "not fit",
        streams.DebugString(), pre.DebugString(), dout.DebugString(), dstreams.DebugString(),
        dpre.DebugString(), rms_inv.DebugString()));
  }
  if (tokens == 0) return absl::OkStatus();
  const bool vec8 = Vec8Ok(streams.data, hidden) && Vec8Ok(dout.data, hidden) &&
                    (dstreams.data == nullptr || Vec8Ok(dstreams.data, hidden));
  WithStreamCount(n, [&](auto n_constant) {
    constexpr int kN = decltype(n_constant)::value;
    auto* kernel =
        Bf16(streams)
            ? (vec8 ? CollapseBackwardKernel<true, kN, 8> : CollapseBackwardKernel<true, kN, 1>)
            : (vec8 ? CollapseBackwardKernel<false, kN, 8> : CollapseBackwardKernel<false, kN, 1>);
    LaunchKernel(kernel, tokens, Threads(hidden), 0, streams.data, pre.data_as<float>(), dout.data,
                 Bf16(dout), hidden, dstreams_write == DxWrite::kAdd, dstreams.data_as<float>(),
                 dpre.data_as<float>(), rms_inv.data_as<float>(), rms_eps);
  });
  return LaunchStatus("MhcCollapseBackward");
}

absl::Status MhcExpandBackward(const core::TensorView& streams, const core::TensorView& y,
                               const core::TensorView& post, const core::TensorView& comb,
                               const core::TensorView& dout, const core::TensorView& dstreams,
                               const core::TensorView& dy, const core::TensorView& dpost,
                               const core::TensorView& dcomb) {
  return MhcExpandBackward(streams, y, post, comb, dout, dstreams, dy, dpost, dcomb, DxWrite::kAdd);
}

absl::Status MhcExpandBackward(const core::TensorView& streams, const core::TensorView& y,
                               const core::TensorView& post, const core::TensorView& comb,
                               const core::TensorView& dout, const core::TensorView& dstreams,
                               const core::TensorView& dy, const core::TensorView& dpost,
                               const core::TensorView& dcomb, DxWrite grads_write,
                               const core::TensorView& rms_inv, float rms_eps) {
  const bool shaped = streams.rank == 3;
  const int64_t tokens = shaped ? streams.shape[0] : -1, n = shaped ? streams.shape[1] : -1,
                hidden = shaped ? streams.shape[2] : -1;
  if (!shaped || n < 1 || n > kMaxN || !Any(streams, {tokens, n, hidden}) ||
      !Any(y, {tokens, hidden}) || !F32(post, {tokens, n}) || !F32(comb, {tokens, n, n}) ||
      !Any(dout, {tokens, n, hidden}) ||
      !(dstreams.data == nullptr || F32(dstreams, {tokens, n, hidden})) ||
      !(rms_inv.data == nullptr || F32(rms_inv, {tokens})) ||
      !(grads_write == DxWrite::kAdd ? F32(dy, {tokens, hidden}) : Any(dy, {tokens, hidden})) ||
      !F32(dpost, {tokens, n}) || !F32(dcomb, {tokens, n, n}) || dstreams.data == dout.data ||
      dstreams.data == streams.data) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MhcExpandBackward: streams %s, y %s, post %s, comb %s, dout %s, dstreams %s, dy %s, "
        "dpost %s, dcomb %s, rms_inv %s do not fit",
        streams.DebugString(), y.DebugString(), post.DebugString(), comb.DebugString(),
        dout.DebugString(), dstreams.DebugString(), dy.DebugString(), dpost.DebugString(),
        dcomb.DebugString(), rms_inv.DebugString()));
  }
  if (tokens == 0) return absl::OkStatus();
  const bool vec8 =
      Vec8Ok(streams.data, hidden) && Vec8Ok(y.data, hidden) && Vec8Ok(dout.data, hidden) &&
      (dstreams.data == nullptr || Vec8Ok(dstreams.data, hidden)) && Vec8Ok(dy.data, hidden);
  WithStreamCount(n, [&](auto n_constant) {
    constexpr int kN = decltype(n_constant)::value;
    auto* kernel =
        Bf16(streams)
            ? (vec8 ? ExpandBackwardKernel<true, kN, 8> : ExpandBackwardKernel<true, kN, 1>)
            : (vec8 ? ExpandBackwardKernel<false, kN, 8> : ExpandBackwardKernel<false, kN, 1>);
    LaunchKernel(kernel, tokens, Threads(hidden), 0, streams.data, y.data, Bf16(y),
                 post.data_as<float>(), comb.data_as<float>(), dout.data, Bf16(dout), hidden,
                 grads_write == DxWrite::kAdd, dstreams.data_as<float>(), dy.data, Bf16(dy),
                 dpost.data_as<float>(), dcomb.data_as<float>(), rms_inv.data_as<float>(), rms_eps);
  });
  return LaunchStatus("MhcExpandBackward");
}

}  // namespace v4rl::kernels::cuda
