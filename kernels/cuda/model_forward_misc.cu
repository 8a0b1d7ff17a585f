#include "absl/strings/str_format.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mhc_team.cuh"
#include "kernels/cuda/model_forward_misc.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kMaxN = kMhcMaxN;

bool F32(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.data != nullptr && v.is_contiguous() &&
         v.dtype == core::DType::kF32;
}
absl::Status Bad(const char* op, const char* expected, const core::TensorView& got) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: expected %s (contiguous f32 on the device), got %s", op, expected, got.DebugString()));
}
unsigned Blocks(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// One team of kMhcTeam lanes a token (mhc_team.cuh): lanes e < n the gates pre and post, lane e
// < n·n entry e of res through kernels/cpu/mhc.cc SinkhornRef: row softmax (max-subtracted) +
// eps, column normalisation, then iters - 1 rounds of rows then columns; every line's sum in the
// serial loops' order (MhcLineReduce), so the entries are SinkhornRef's on one thread bit for bit.
__global__ void CoefficientsKernel(const float* mixes, const float* base, const float* scale,
                                   int64_t tokens, int n, int64_t iters, float eps, float* pre,
                                   float* post, float* comb) {
  WaitForPriorKernels();
  const int lane = threadIdx.x % 32, team_base = lane & ~(kMhcTeam - 1), e = lane - team_base;
  const int64_t t = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / kMhcTeam;
  const bool live = t < tokens;
  const int64_t row = live ? t : tokens - 1;  // a team past the end reads a real row, writes none
  const int width = (2 + n) * n, nn = n * n;
  const float* m = mixes + row * width;
  float c = e < nn ? m[2 * n + e] * scale[2] + base[2 * n + e] : 0.0f;
  c = expf(c - MhcLineReduce<true>(c, e, n, /*by_rows=*/true, team_base));
  c = c / MhcLineReduce<false>(c, e, n, /*by_rows=*/true, team_base) + eps;
  for (int64_t it = 0; it < iters; ++it) {
    if (it > 0) c /= MhcLineReduce<false>(c, e, n, /*by_rows=*/true, team_base) + eps;
    c /= MhcLineReduce<false>(c, e, n, /*by_rows=*/false, team_base) + eps;
  }
  if (!live) return;
  if (e < n) {
    pre[row * n + e] = Sigmoid(m[e] * scale[0] + base[e]) + eps;
    post[row * n + e] = 2.0f * Sigmoid(m[n + e] * scale[1] + base[n + e]);
  }
  if (e < nn) comb[row * nn + e] = c;
}

__global__ void HeadCoefficientsKernel(const float* mixes, const float* base, const float* scale,
                                       int64_t count, int n, float eps, float* pre) {
  WaitForPriorKernels();
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= count) return;
  pre[i] = Sigmoid(mixes[i] * scale[0] + base[i % n]) + eps;
}

// One thread a token's W consecutive channels (W = 8: Load8 on 16-byte rows of H % 8 == 0; else
// W = 1): the token's streams weighted by pre, stream 0 first, the same sums for either W.
template <int W>
__global__ void CollapseKernel(const void* streams, bool streams_bf16, const float* pre,
                               int64_t tokens, int n, int64_t hidden, float* out) {
  WaitForPriorKernels();
  const int64_t e = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * W;
  if (e >= tokens * hidden) return;
  const int64_t t = e / hidden, h = e % hidden;
  float sum[W] = {};
  for (int j = 0; j < n; ++j) {
    const float weight = pre[t * n + j];
    const int64_t at = (t * n + j) * hidden + h;
    float x[W];
    LoadW<W>(streams, streams_bf16, at, x);
#pragma unroll
    for (int i = 0; i < W; ++i) sum[i] += weight * x[i];
  }
  StoreW<W>(out, false, e, sum);
}

// One thread a (query, key): heads in order, as kernels/cpu/indexer.cc.
__global__ void HeadScoresKernel(const float* dots, const float* weights, int64_t num_q,
                                 int64_t heads, int64_t num_keys, float score_scale,
                                 float* scores) {
  WaitForPriorKernels();
  const int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (e >= num_q * num_keys) return;
  const int64_t i = e / num_keys, s = e % num_keys;
  float total = 0.0f;
  for (int64_t h = 0; h < heads; ++h) {
    total +=
        fmaxf(dots[(i * heads + h) * num_keys + s], 0.0f) * score_scale * weights[i * heads + h];
  }
  scores[e] = total;
}

}  // namespace

absl::Status MhcCoefficients(const core::TensorView& mixes, const core::TensorView& base,
                             const core::TensorView& scale, int64_t iters, float eps,
                             const core::TensorView& pre, const core::TensorView& post,
                             const core::TensorView& comb) {
  const char* op = "cuda::MhcCoefficients";
  if (!F32(pre) || pre.rank != 2 || pre.shape[1] < 1 || pre.shape[1] > kMaxN) {
    return Bad(op, "pre [N, n] with n <= 4", pre);
  }
  const int64_t tokens = pre.shape[0], n = pre.shape[1];
  if (!F32(mixes) || !mixes.SameShape({tokens, (2 + n) * n}))
    return Bad(op, "mixes [N, (2+n)·n]", mixes);
  if (!F32(base) || !base.SameShape({(2 + n) * n})) return Bad(op, "base [(2+n)·n]", base);
  if (!F32(scale) || !scale.SameShape({3})) return Bad(op, "scale [3]", scale);
  if (!F32(post) || !post.SameShape({tokens, n})) return Bad(op, "post [N, n]", post);
  if (!F32(comb) || !comb.SameShape({tokens, n, n})) return Bad(op, "comb [N, n, n]", comb);
  if (iters < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: iters = %d, expected >= 1", op, iters));
  }
  if (tokens == 0) return absl::OkStatus();
  // A team of 16 lanes a token, 8 tokens a block. On the H200 at 4,096 tokens one thread a token
  // (128 blocks of a warp) took 54 µs a launch (Nsight Compute, a training step of the mid
  // config), its Sinkhorn serial work on about one warp an SM.
  constexpr int kThreads = 128;
  LaunchKernel(CoefficientsKernel, Blocks(tokens * kMhcTeam, kThreads), kThreads, 0,
               mixes.data_as<float>(), base.data_as<float>(), scale.data_as<float>(), tokens,
               static_cast<int>(n), iters, eps, pre.data_as<float>(), post.data_as<float>(),
               comb.data_as<float>());
  return LaunchStatus(op);
}

absl::Status HcHeadCoefficients(const core::TensorView& mixes, const core::TensorView& base,
                                const core::TensorView& scale, float eps,
                                const core::TensorView& pre) {
  const char* op = "cuda::HcHeadCoefficients";
  if (!F32(mixes) || mixes.rank != 2 || mixes.shape[1] < 1) return Bad(op, "mixes [N, n]", mixes);
  const int64_t n = mixes.shape[1];
  if (!F32(base) || !base.SameShape({n})) return Bad(op, "base [n]", base);
  if (!F32(scale) || !scale.SameShape({1})) return Bad(op, "scale [1]", scale);
  if (!F32(pre) || !pre.SameShape(mixes.shape_vector())) return Bad(op, "pre [N, n]", pre);
  const int64_t count = mixes.numel();
  if (count == 0) return absl::OkStatus();
  LaunchKernel(HeadCoefficientsKernel, Blocks(count, 256), 256, 0, mixes.data_as<float>(),
               base.data_as<float>(), scale.data_as<float>(), count, static_cast<int>(n), eps,
               pre.data_as<float>());
  return LaunchStatus(op);
}

absl::Status MhcCollapse(const core::TensorView& streams, const core::TensorView& pre,
                         const core::TensorView& out) {
  const char* op = "cuda::MhcCollapse";
  const bool bf16 = streams.dtype == core::DType::kBF16;
  if (!(F32(streams) || (bf16 && streams.device == core::Device::kCuda && streams.data != nullptr &&
                         streams.is_contiguous())) ||
      streams.rank != 3) {
    return Bad(op, "streams [N, n, H] (bf16 allowed)", streams);
  }
  const int64_t tokens = streams.shape[0], n = streams.shape[1], hidden = streams.shape[2];
  if (!F32(pre) || !pre.SameShape({tokens, n})) return Bad(op, "pre [N, n]", pre);
  if (!F32(out) || !out.SameShape({tokens, hidden})) return Bad(op, "out [N, H]", out);
  if (tokens * hidden == 0) return absl::OkStatus();
  const int width = Vec8Ok(streams.data, hidden) && Vec8Ok(out.data, hidden) ? 8 : 1;
  LaunchKernel(width == 8 ? CollapseKernel<8> : CollapseKernel<1>,
               Blocks(tokens * hidden / width, 256), 256, 0, streams.data, bf16,
               pre.data_as<float>(), tokens, static_cast<int>(n), hidden, out.data_as<float>());
  return LaunchStatus(op);
}

absl::Status IndexerHeadScores(const core::TensorView& dots, const core::TensorView& weights,
                               float score_scale, const core::TensorView& scores) {
  const char* op = "cuda::IndexerHeadScores";
  if (!F32(weights) || weights.rank != 2) return Bad(op, "weights [num_q, heads]", weights);
  const int64_t num_q = weights.shape[0], heads = weights.shape[1];
  if (!F32(scores) || scores.rank != 2 || scores.shape[0] != num_q) {
    return Bad(op, "scores [num_q, num_keys]", scores);
  }
  const int64_t num_keys = scores.shape[1];
  if (!F32(dots) || !dots.SameShape({num_q * heads, num_keys})) {
    return Bad(op, "dots [num_q · heads, num_keys]", dots);
  }
  if (num_q * num_keys == 0) return absl::OkStatus();
  LaunchKernel(HeadScoresKernel, Blocks(num_q * num_keys, 256), 256, 0, dots.data_as<float>(),
               weights.data_as<float>(), num_q, heads, num_keys, score_scale,
               scores.data_as<float>());
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
