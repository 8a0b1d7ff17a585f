// MhcStreamsBackward (mhc_backward.h): the whole stream gradient of one mHC site in one pass over
// the streams, instead of an expand backward, a [N, n·H] dnormed GEMM and an RMSNorm backward
// each reading and writing the f32 stream gradient. Per token t, with r = rms_inv[t] and
// D = n·H, stream j and channel h (c = j·H + h):
//   dstreams[t, j, h] = Σ_k comb[t, j, k]·dout[t, k, h] + pre[t, j]·dcollapsed[t, h]
//                       + Σ_m r·dmixes[t, m]·fn[m, c] − (r²/D)·(Σ_m dmixes[t, m]·mixes[t, m])·x
// The last two terms are the backward of mixes = RMSNorm(x̄)·fnᵀ: RMSNorm's dx = r·dn − (r³/D)·x
// ·Σ_c x_c·dn_c with dn = dmixes·fn, where Σ_c x_c·dn_c = Σ_m dmixes_m·mixes_m / r (the mixes
// are the normed row's dot products with fn), so no [N, D] dnormed is formed.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mhc.h"
#include "kernels/cuda/mhc_backward.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kThreads = 128;  // a block: 64 channels, two lanes each
constexpr int kTokens = 32;    // tokens a block: fn's registers are loaded once for them
constexpr int kBatch = 4;      // tokens whose loads are issued together

// The streams' element type is the kernel's template argument X (float or __nv_bfloat16): loads
// of a runtime-chosen width compile to branches, and the batched loads then wait one at a time.
struct StreamsParams {
  const void* streams;
  const float* dout;  // or nullptr (no expand term; comb is then nullptr too)
  const float* comb;
  const float* pre;
  const float* dcollapsed;
  const float* fn;
  const float* dmixes;
  const float* mixes;
  const float* rms_inv;
  float* dstreams;
  int64_t tokens, hidden;
};

// Two adjacent lanes per channel h, each with half of its N streams (J = ceil(N / 2): lane half
// 0 streams [0, J), half 1 streams [J, N)) and fn[m, j·H + h] for every mix m and its streams in
// registers (48 at n = 4, so that four 128-thread blocks fit an SM); both lanes load the channel's
// N output gradients (one address a pair: no extra traffic). Each walks kTokens tokens, kBatch
// tokens' loads issued together; the per-token scalars (r·dmixes, comb, pre and the RMS term's
// coefficient) are staged in shared memory first. N streams, M mixes.
template <typename X, int N, int M>
__global__ void __launch_bounds__(kThreads, 4) StreamsBackwardKernel(StreamsParams p) {
  constexpr int J = (N + 1) / 2;
  constexpr int kChannels = kThreads / 2;
  WaitForPriorKernels();
  __shared__ float4 scaled_dmixes4[kTokens][(M + 3) / 4];
  __shared__ float comb[kTokens][N * N];
  __shared__ float pre[kTokens][N];
  __shared__ float rms_coef[kTokens];
  const int64_t first = int64_t(blockIdx.y) * kTokens;
  const int count = int(Min64(kTokens, p.tokens - first));
  for (int i = threadIdx.x; i < count * M; i += kThreads) {
    const int64_t t = first + i / M;
    reinterpret_cast<float*>(scaled_dmixes4[i / M])[i % M] = p.rms_inv[t] * p.dmixes[t * M + i % M];
  }
  if (p.comb != nullptr) {
    for (int i = threadIdx.x; i < count * N * N; i += kThreads) {
      comb[i / (N * N)][i % (N * N)] = p.comb[first * N * N + i];
    }
  }
  for (int i = threadIdx.x; i < count * N; i += kThreads) pre[i / N][i % N] = p.pre[first * N + i];
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const int64_t t = first + i;
    float dot = 0.0f;
#pragma unroll
    for (int m = 0; m < M; ++m) dot += p.dmixes[t * M + m] * p.mixes[t * M + m];
    const float r = p.rms_inv[t];
    rms_coef[i] = r * r / float(N * p.hidden) * dot;
  }
  __syncthreads();
  const int half = threadIdx.x % 2;
  const int64_t h = int64_t(blockIdx.x) * kChannels + threadIdx.x / 2;
  const int j0 = half * J;  // this lane's first stream
  if (h >= p.hidden || j0 >= N) return;
  const int64_t width = N * p.hidden;
  float w[M][J];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int jj = 0; jj < J; ++jj) {
      w[m][jj] = j0 + jj < N ? p.fn[m * width + (j0 + jj) * p.hidden + h] : 0.0f;
    }
  }
  for (int base = 0; base < count; base += kBatch) {
    float g[kBatch][N], x[kBatch][J], dc[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t t = first + Min64(base + b, count - 1);  // a token past the end reloads one
#pragma unroll
      for (int k = 0; k < N; ++k) {
        g[b][k] = p.dout != nullptr ? p.dout[(t * N + k) * p.hidden + h] : 0.0f;
      }
#pragma unroll
      for (int jj = 0; jj < J; ++jj) {
        const int j = Min64(j0 + jj, N - 1);  // a stream past n (odd n) reloads the last
        x[b][jj] = float(static_cast<const X*>(p.streams)[(t * N + j) * p.hidden + h]);
      }
      dc[b] = p.dcollapsed[t * p.hidden + h];
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b;
      if (i >= count) break;
      float dm[4 * ((M + 3) / 4)];
#pragma unroll
      for (int q = 0; q < (M + 3) / 4; ++q) {
        const float4 v = scaled_dmixes4[i][q];
        dm[4 * q] = v.x, dm[4 * q + 1] = v.y, dm[4 * q + 2] = v.z, dm[4 * q + 3] = v.w;
      }
#pragma unroll
      for (int jj = 0; jj < J; ++jj) {
        const int j = j0 + jj;
        if (j >= N) break;
        float acc = pre[i][j] * dc[b];
        if (p.dout != nullptr) {
#pragma unroll
          for (int k = 0; k < N; ++k) acc += comb[i][j * N + k] * g[b][k];
        }
#pragma unroll
        for (int m = 0; m < M; ++m) acc += dm[m] * w[m][jj];
        acc -= rms_coef[i] * x[b][jj];
        p.dstreams[((first + i) * N + j) * p.hidden + h] = acc;
      }
    }
  }
}

// The kernel for n streams (1 .. kMaxHcMult) with the expand term or without (hc_head: n mixes).
template <typename X, int N>
void (*KernelFor(bool expand))(StreamsParams) {
  return expand ? StreamsBackwardKernel<X, N, (2 + N) * N> : StreamsBackwardKernel<X, N, N>;
}
template <typename X>
void (*KernelFor(int64_t n, bool expand))(StreamsParams) {
  return n == 1   ? KernelFor<X, 1>(expand)
         : n == 2 ? KernelFor<X, 2>(expand)
         : n == 3 ? KernelFor<X, 3>(expand)
                  : KernelFor<X, kMaxHcMult>(expand);
}

bool DeviceContiguous(const core::TensorView& v, absl::Span<const int64_t> shape, bool f32_only) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         (v.dtype == core::DType::kF32 || (!f32_only && v.dtype == core::DType::kBF16)) &&
         v.SameShape(shape);
}

}  // namespace

absl::Status MhcStreamsBackward(const MhcStreamsBackwardArgs& a) {
  const bool shaped = a.streams.rank == 3 && a.fn.rank == 2;
  const int64_t tokens = shaped ? a.streams.shape[0] : -1, n = shaped ? a.streams.shape[1] : -1,
                hidden = shaped ? a.streams.shape[2] : -1, mixes = shaped ? a.fn.shape[0] : -1;
  const bool expand = a.dout.data != nullptr;
  const bool ok = shaped && n >= 1 && n <= kMaxHcMult && mixes == (expand ? (2 + n) * n : n) &&
                  DeviceContiguous(a.streams, {tokens, n, hidden}, false) &&
                  (expand ? DeviceContiguous(a.dout, {tokens, n, hidden}, true) &&
                                DeviceContiguous(a.comb, {tokens, n, n}, true)
                          : a.comb.data == nullptr) &&
                  DeviceContiguous(a.pre, {tokens, n}, true) &&
                  DeviceContiguous(a.dcollapsed, {tokens, hidden}, true) &&
                  DeviceContiguous(a.fn, {mixes, n * hidden}, true) &&
                  DeviceContiguous(a.dmixes, {tokens, mixes}, true) &&
                  DeviceContiguous(a.mixes, {tokens, mixes}, true) &&
                  DeviceContiguous(a.rms_inv, {tokens}, true) &&
                  DeviceContiguous(a.dstreams, {tokens, n, hidden}, true) &&
                  a.dstreams.data != a.streams.data && a.dstreams.data != a.dout.data &&
                  (tokens + kTokens - 1) / kTokens <= 65535;
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MhcStreamsBackward: streams %s, dout %s, comb %s, pre %s, dcollapsed %s, fn %s, "
        "dmixes %s, mixes %s, rms_inv %s, dstreams %s do not fit (n <= %d streams, at most %d "
        "tokens; fn [(2+n)·n, "
        "n·H] with dout and comb, [n, n·H] without; dout, dcollapsed and dstreams f32, dstreams "
        "apart "
        "from the inputs)",
        a.streams.DebugString(), a.dout.DebugString(), a.comb.DebugString(), a.pre.DebugString(),
        a.dcollapsed.DebugString(), a.fn.DebugString(), a.dmixes.DebugString(),
        a.mixes.DebugString(), a.rms_inv.DebugString(), a.dstreams.DebugString(), kMaxHcMult,
        65535 * kTokens));
  }
  if (tokens == 0 || hidden == 0) return absl::OkStatus();
  const StreamsParams p{a.streams.data,
                        a.dout.data_as<float>(),
                        a.comb.data_as<float>(),
                        a.pre.data_as<float>(),
                        a.dcollapsed.data_as<float>(),
                        a.fn.data_as<float>(),
                        a.dmixes.data_as<float>(),
                        a.mixes.data_as<float>(),
                        a.rms_inv.data_as<float>(),
                        a.dstreams.data_as<float>(),
                        tokens,
                        hidden};
  auto* kernel = a.streams.dtype == core::DType::kBF16 ? KernelFor<__nv_bfloat16>(n, expand)
                                                       : KernelFor<float>(n, expand);
  const dim3 grid(unsigned((hidden + kThreads / 2 - 1) / (kThreads / 2)),
                  unsigned((tokens + kTokens - 1) / kTokens));
  LaunchKernel(kernel, grid, kThreads, 0, p);
  return LaunchStatus("MhcStreamsBackward");
}

}  // namespace v4rl::kernels::cuda
