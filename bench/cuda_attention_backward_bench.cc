// Times SparseAttentionBackward (kernels/cuda/attention_backward.h) at the "mid" config's CSA
// shapes for T training tokens (16 heads of 512, window 128, top-512 of T/4 compressed entries):
// the CUDA-core fp32 kernel on f32 inputs (the reference training path's, the baseline) and the
// tensor-core kernel on bf16 inputs (bf16 GEMM math), in the same run, with the ratio. FLOPs per
// (query, head, key): 10·head_dim (S, dP, dQ and the key-row gradient's two products).
//
//   cuda_attention_backward_bench [TOKENS=4096] [ITERS=5]
//
// Prints one JSON line per kernel {"kernel", "tokens", "ms", "tflops"} and then
// {"kind": "ratio", "cuda_cores_over_tensor_cores"}.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "bench/cuda_bench_common.h"
#include "core/tensor.h"
#include "kernels/cuda/attention_backward.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"

namespace v4rl {
namespace {

namespace kc = kernels::cuda;
using bench::Check;
using bench::RandomDevice;
using bench::TimeMs;
using core::DType;
using core::Tensor;

Tensor Bf16Copy(const Tensor& f32) {
  Tensor out = Tensor::Empty(DType::kBF16, f32.view().shape_vector(), kc::DeviceAllocator());
  Check(kc::F32ToBf16(f32.view(), out.view()), "convert");
  return out;
}

Tensor Zeros(const core::Shape& shape) {
  Tensor host = Tensor::Zeros(DType::kF32, shape);
  Tensor out = Tensor::Empty(DType::kF32, shape, kc::DeviceAllocator());
  Check(kc::Copy(host.view(), out.view()), "zeros");
  return out;
}

int Main(int argc, char** argv) {
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 5;
  if (tokens < 4 || iters < 1) {
    std::fprintf(stderr, "usage: cuda_attention_backward_bench [TOKENS >= 4] [ITERS >= 1]\n");
    return 2;
  }
  if (kc::DeviceCount() == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  const int64_t heads = 16, dim = 512, window = 128, topk = 512, entries = tokens / 4;
  const Tensor q = RandomDevice(DType::kF32, {tokens, heads, dim}, 1, 1.0f);
  const Tensor kv = RandomDevice(DType::kF32, {tokens, dim}, 2, 1.0f);
  const Tensor comp = RandomDevice(DType::kF32, {entries, dim}, 3, 1.0f);
  const Tensor out = RandomDevice(DType::kF32, {tokens, heads, dim}, 4, 0.1f);
  const Tensor dout = RandomDevice(DType::kF32, {tokens, heads, dim}, 5, 0.1f);
  const Tensor sink = RandomDevice(DType::kF32, {heads}, 6, 1.0f);
  // lse of a few hundred keys with scores near 0: probabilities stay in range.
  Tensor host_lse = Tensor::Empty(DType::kF32, {tokens, heads});
  std::fill(host_lse.data<float>(), host_lse.data<float>() + tokens * heads, 6.5f);
  Tensor lse = Tensor::Empty(DType::kF32, {tokens, heads}, kc::DeviceAllocator());
  Check(kc::Copy(host_lse.view(), lse.view()), "lse");
  // Picks: the first min(visible, 512) visible entries, -1 padding (the cost does not depend on
  // which).
  Tensor picks = Tensor::Empty(DType::kI32, {tokens, topk});
  int64_t keys = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t visible = (t + 1) / 4;
    for (int64_t j = 0; j < topk; ++j) {
      picks.data<int32_t>()[t * topk + j] = j < visible ? static_cast<int32_t>(j) : -1;
    }
    keys += std::min<int64_t>(t + 1, window) + std::min<int64_t>(visible, topk);
  }
  Tensor d_picks = Tensor::Empty(DType::kI32, {tokens, topk}, kc::DeviceAllocator());
  Check(kc::Copy(picks.view(), d_picks.view()), "picks");
  const Tensor dq = Zeros({tokens, heads, dim}), dkv = Zeros({tokens, dim});
  const Tensor dcomp = Zeros({entries, dim}), dsink = Zeros({heads});
  const Tensor q16 = Bf16Copy(q), kv16 = Bf16Copy(kv), comp16 = Bf16Copy(comp),
               dout16 = Bf16Copy(dout);

  kc::SparseAttentionBackwardArgs args;
  args.sink = sink.view(), args.out = out.view(), args.lse = lse.view();
  args.comp_idx = d_picks.view();
  args.dq = dq.view(), args.dkv = dkv.view(), args.dcomp_kv = dcomp.view();
  args.dsink = dsink.view();
  args.window = window;
  args.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const double flops = 10.0 * dim * heads * static_cast<double>(keys);
  const struct {
    const char* name;
    const Tensor &q, &kv, &comp, &dout;
    bool tensor_cores;
  } kernels[] = {{"cuda cores, f32 inputs", q, kv, comp, dout, false},
                 {"tensor cores, bf16 inputs", q16, kv16, comp16, dout16, true}};
  double ms[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    args.q = kernels[k].q.view(), args.kv = kernels[k].kv.view();
    args.comp_kv = kernels[k].comp.view(), args.dout = kernels[k].dout.view();
    args.tensor_cores = kernels[k].tensor_cores;
    ms[k] = TimeMs(iters, [&] { Check(kc::SparseAttentionBackward(args), kernels[k].name); });
    std::printf("{\"kernel\": \"%s\", \"tokens\": %lld, \"ms\": %.3f, \"tflops\": %.2f}\n",
                kernels[k].name, static_cast<long long>(tokens), ms[k],
                flops / (ms[k] * 1e-3) / 1e12);
    std::fflush(stdout);
  }
  std::printf("{\"kind\": \"ratio\", \"cuda_cores_over_tensor_cores\": %.2f}\n", ms[0] / ms[1]);
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
