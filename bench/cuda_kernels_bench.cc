// Times v4rl's CUDA ops at the "mid" config's shapes (issue 11: hidden 2048, 16 heads of 512,
// window 128, CSA top-k 512 of T/4 entries, HCA ratio 128, indexer 16 heads of 128, mHC n = 4)
// for T prefill tokens, and prints one JSON line per op: {"op", "shape", "ms", "tflops"}.
// bench/cuda_kernels_bench.sh runs the torch baseline at the same shapes and prints the ratios.
//
//   cuda_kernels_bench [TOKENS=4096] [ITERS=20]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/bench_common.h"
#include "bench/cuda_bench_common.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/mhc.h"

namespace v4rl {
namespace {

namespace kc = kernels::cuda;
using bench::Check;
using bench::RandomDevice;
using bench::TimeMs;
using core::DType;
using core::Tensor;

void Print(const std::string& op, const std::string& shape, double ms, double flops) {
  std::printf("{\"op\": \"%s\", \"shape\": \"%s\", \"ms\": %.4f, \"tflops\": %.2f}\n", op.c_str(),
              shape.c_str(), ms, flops / (ms * 1e-3) / 1e12);
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 20;
  if (kc::DeviceCount() == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  auto handle_or = kc::GemmHandle::Create();
  Check(handle_or.status(), "GemmHandle");
  kc::GemmHandle& handle = **handle_or;

  // Dense GEMMs of one mid-config layer and the head, x [T, K] · w [N, K]ᵀ.
  struct GemmShape {
    const char* name;
    int64_t n, k;
    DType out;
  };
  const std::vector<GemmShape> gemms = {{"gemm wq_a", 1024, 2048, DType::kBF16},
                                        {"gemm wq_b", 8192, 1024, DType::kBF16},
                                        {"gemm wo_b", 2048, 2048, DType::kBF16},
                                        {"gemm expert w1 (T x 6 / 32 rows)", 1024, 2048, DType::kBF16},
                                        {"gemm head", 32768, 2048, DType::kF32}};
  for (const GemmShape& g : gemms) {
    const int64_t m = std::string(g.name).find("expert") != std::string::npos ? tokens * 6 / 32 : tokens;
    const Tensor x = RandomDevice(DType::kBF16, {m, g.k}, 1, 1.0f);
    const Tensor w = RandomDevice(DType::kBF16, {g.n, g.k}, 2, 0.02f);
    const Tensor out = Tensor::Empty(g.out, {m, g.n}, kc::DeviceAllocator());
    const double ms = TimeMs(iters, [&] { Check(kc::Gemm(handle, x.view(), w.view(), out.view()), g.name); });
    Print(g.name, std::to_string(m) + "x" + std::to_string(g.n) + "x" + std::to_string(g.k) +
                      (g.out == DType::kF32 ? " f32" : " bf16"),
          ms, 2.0 * m * g.n * g.k);
  }

  // Sparse attention, CSA: window 128 + 512 picked entries of T/4; HCA: window + T/128 entries.
  const int64_t heads = 16, dim = 512, window = 128;
  const Tensor q = RandomDevice(DType::kBF16, {tokens, heads, dim}, 3, 1.0f);
  const Tensor kv = RandomDevice(DType::kBF16, {tokens, dim}, 4, 1.0f);
  const Tensor sink = RandomDevice(DType::kF32, {heads}, 5, 1.0f);
  const Tensor out = Tensor::Empty(DType::kBF16, {tokens, heads, dim}, kc::DeviceAllocator());
  const int64_t csa_entries = tokens / 4, topk = 512;
  const Tensor comp = RandomDevice(DType::kBF16, {csa_entries, dim}, 6, 1.0f);
  // Picks: the first min(visible, 512) visible entries (the kernel's cost does not depend on
  // which), -1 padding.
  Tensor picks = Tensor::Empty(DType::kI32, {tokens, topk});
  int64_t keys = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t visible = (t + 1) / 4;
    for (int64_t j = 0; j < topk; ++j) picks.data<int32_t>()[t * topk + j] = j < visible ? int32_t(j) : -1;
    keys += std::min<int64_t>(t + 1, window) + std::min<int64_t>(visible, topk);
  }
  Tensor d_picks = Tensor::Empty(DType::kI32, {tokens, topk}, kc::DeviceAllocator());
  Check(kc::Copy(picks.view(), d_picks.view()), "picks");
  kc::SparseAttentionArgs args;
  args.q = q.view();
  args.kv = kv.view();
  args.sink = sink.view();
  args.out = out.view();
  args.window = window;
  args.scale = 1.0f / std::sqrt(float(dim));
  args.comp_kv = comp.view();
  args.comp_idx = d_picks.view();
  double ms = TimeMs(iters, [&] { Check(kc::SparseAttention(args), "attention"); });
  Print("sparse attention CSA", std::to_string(tokens) + " q x 16 heads x 512, window 128 + top-512",
        ms, 4.0 * heads * dim * keys);
  const int64_t hca_entries = tokens / 128;
  const Tensor hca = RandomDevice(DType::kBF16, {std::max<int64_t>(hca_entries, 1), dim}, 7, 1.0f);
  args.comp_kv = hca.view().Slice(0, 0, hca_entries);
  args.comp_idx = core::TensorView();
  args.comp_ratio = 128;
  keys = 0;
  for (int64_t t = 0; t < tokens; ++t) keys += std::min<int64_t>(t + 1, window) + (t + 1) / 128;
  ms = TimeMs(iters, [&] { Check(kc::SparseAttention(args), "attention"); });
  Print("sparse attention HCA", std::to_string(tokens) + " q x 16 heads x 512, window 128 + T/128",
        ms, 4.0 * heads * dim * keys);

  // Indexer: 16 heads of 128 against T/4 keys, top-512.
  const Tensor iq = RandomDevice(DType::kBF16, {tokens, 16, 128}, 8, 1.0f);
  const Tensor iw = RandomDevice(DType::kF32, {tokens, 16}, 9, 0.25f);
  const Tensor ik = RandomDevice(DType::kBF16, {csa_entries, 128}, 10, 1.0f);
  const Tensor itopk = Tensor::Empty(DType::kI32, {tokens, topk}, kc::DeviceAllocator());
  const int64_t chunk = 256;
  const Tensor workspace = Tensor::Empty(
      DType::kF32, {kc::IndexerTopKWorkspaceFloats(chunk, 16, csa_entries)}, kc::DeviceAllocator());
  kc::IndexerTopKArgs ia;
  ia.q = iq.view();
  ia.weights = iw.view();
  ia.keys = ik.view();
  ia.topk_idx = itopk.view();
  ia.workspace = workspace.view();
  ia.ratio = 4;
  ia.score_scale = 1.0f / std::sqrt(128.0f);
  ia.q_chunk = chunk;
  ms = TimeMs(iters, [&] { Check(kc::IndexerTopK(handle, ia), "indexer"); });
  Print("indexer scores + top-512", std::to_string(tokens) + " q x 16 heads x 128 vs T/4 keys", ms,
        2.0 * tokens * 16 * 128 * csa_entries);

  // mHC pre (fused) on [T, 4, 2048] bf16 streams.
  const Tensor streams = RandomDevice(DType::kBF16, {tokens, 4, 2048}, 11, 1.0f);
  const Tensor fn = RandomDevice(DType::kF32, {24, 4 * 2048}, 12, 0.01f);
  const Tensor base = RandomDevice(DType::kF32, {24}, 13, 0.1f);
  const Tensor scale = RandomDevice(DType::kF32, {3}, 14, 0.1f);
  const Tensor pre = Tensor::Empty(DType::kF32, {tokens, 4}, kc::DeviceAllocator());
  const Tensor post = Tensor::Empty(DType::kF32, {tokens, 4}, kc::DeviceAllocator());
  const Tensor comb = Tensor::Empty(DType::kF32, {tokens, 4, 4}, kc::DeviceAllocator());
  const Tensor collapsed = Tensor::Empty(DType::kBF16, {tokens, 2048}, kc::DeviceAllocator());
  kc::MhcPreArgs ma;
  ma.streams = streams.view();
  ma.fn = fn.view();
  ma.base = base.view();
  ma.scale = scale.view();
  ma.pre = pre.view();
  ma.post = post.view();
  ma.comb = comb.view();
  ma.collapsed = collapsed.view();
  ms = TimeMs(iters, [&] { Check(kc::MhcPre(ma), "mhc"); });
  Print("mhc pre (fused)", std::to_string(tokens) + " x 4 x 2048", ms, 2.0 * tokens * 24 * 4 * 2048);
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
