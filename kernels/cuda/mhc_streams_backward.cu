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

constexpr int kThreads = 128;  // channels a block
constexpr int kTokens = 32;    // tokens a block: fn's registers are loaded once for them
constexpr int kBatch = 4;      // tokens whose loads are issued together

struct StreamsParams {
  const void* streams;
  bool streams_bf16;
  const void* dout;  // or nullptr (no expand term; comb is then nullptr too)
  bool dout_bf16;
  const float* comb;
  const float* pre;
  const void* dcollapsed;
  bool dcollapsed_bf16;
  const float* fn;
  const float* dmixes;
  const float* mixes;
  const float* rms_inv;
  float* dstreams;
  int64_t tokens, hidden;
};

// One thread per channel h holds fn[m, j·H + h] for every mix m and stream j in registers and
// walks kTokens tokens; the per-token scalars (r·dmixes, comb, pre and the RMS term's
// coefficient) are staged in shared memory first. N streams, M mixes.
template <int N, int M>
__global__ void __launch_bounds__(kThreads) StreamsBackwardKernel(StreamsParams p) {
  WaitForPriorKernels();
  __shared__ float scaled_dmixes[kTokens][M];
  __shared__ float comb[kTokens][N * N];
  __shared__ float pre[kTokens][N];
  __shared__ float rms_coef[kTokens];
  const int64_t first = int64_t(blockIdx.y) * kTokens;
  const int count = int(Min64(kTokens, p.tokens - first));
  for (int i = threadIdx.x; i < count * M; i += kThreads) {
    const int64_t t = first + i / M;
    scaled_dmixes[i / M][i % M] = p.rms_inv[t] * p.dmixes[t * M + i % M];
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
  const int64_t h = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (h >= p.hidden) return;
  const int64_t width = N * p.hidden;
  float w[M][N];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int j = 0; j < N; ++j) w[m][j] = p.fn[m * width + j * p.hidden + h];
  }
  for (int base = 0; base < count; base += kBatch) {
    float g[kBatch][N], x[kBatch][N], dc[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t t = first + Min64(base + b, count - 1);  // a token past the end reloads one
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const int64_t at = (t * N + j) * p.hidden + h;
        x[b][j] = LoadF(p.streams, p.streams_bf16, at);
        g[b][j] = p.dout != nullptr ? LoadF(p.dout, p.dout_bf16, at) : 0.0f;
      }
      dc[b] = LoadF(p.dcollapsed, p.dcollapsed_bf16, t * p.hidden + h);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b;
      if (i >= count) break;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        float acc = pre[i][j] * dc[b];
        if (p.dout != nullptr) {
#pragma unroll
          for (int k = 0; k < N; ++k) acc += comb[i][j * N + k] * g[b][k];
        }
#pragma unroll
        for (int m = 0; m < M; ++m) acc += scaled_dmixes[i][m] * w[m][j];
        acc -= rms_coef[i] * x[b][j];
        p.dstreams[((first + i) * N + j) * p.hidden + h] = acc;
      }
    }
  }
}

// The kernel for n streams (1 .. kMaxHcMult) with the expand term or without (hc_head: n mixes).
template <int N>
void (*KernelFor(bool expand))(StreamsParams) {
  return expand ? StreamsBackwardKernel<N, (2 + N) * N> : StreamsBackwardKernel<N, N>;
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
                  (expand ? DeviceContiguous(a.dout, {tokens, n, hidden}, false) &&
                                DeviceContiguous(a.comb, {tokens, n, n}, true)
                          : a.comb.data == nullptr) &&
                  DeviceContiguous(a.pre, {tokens, n}, true) &&
                  DeviceContiguous(a.dcollapsed, {tokens, hidden}, false) &&
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
        "n·H] with dout and comb, [n, n·H] without; dstreams f32 and apart from the inputs)",
        a.streams.DebugString(), a.dout.DebugString(), a.comb.DebugString(), a.pre.DebugString(),
        a.dcollapsed.DebugString(), a.fn.DebugString(), a.dmixes.DebugString(),
        a.mixes.DebugString(), a.rms_inv.DebugString(), a.dstreams.DebugString(), kMaxHcMult,
        65535 * kTokens));
  }
  if (tokens == 0 || hidden == 0) return absl::OkStatus();
  const auto bf16 = [](const core::TensorView& v) { return v.dtype == core::DType::kBF16; };
  const StreamsParams p{a.streams.data,
                        bf16(a.streams),
                        a.dout.data,
                        bf16(a.dout),
                        a.comb.data_as<float>(),
                        a.pre.data_as<float>(),
                        a.dcollapsed.data,
                        bf16(a.dcollapsed),
                        a.fn.data_as<float>(),
                        a.dmixes.data_as<float>(),
                        a.mixes.data_as<float>(),
                        a.rms_inv.data_as<float>(),
                        a.dstreams.data_as<float>(),
                        tokens,
                        hidden};
  auto* kernel = n == 1   ? KernelFor<1>(expand)
                 : n == 2 ? KernelFor<2>(expand)
                 : n == 3 ? KernelFor<3>(expand)
                          : KernelFor<kMaxHcMult>(expand);
  const dim3 grid(unsigned((hidden + kThreads - 1) / kThreads),
                  unsigned((tokens + kTokens - 1) / kTokens));
  LaunchKernel(kernel, grid, kThreads, 0, p);
  return LaunchStatus("MhcStreamsBackward");
}

}  // namespace v4rl::kernels::cuda
