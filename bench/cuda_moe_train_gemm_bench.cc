// The training step's routed-expert GEMMs at the "mid" config's shapes (32 experts of 1024,
// hidden 2048, 6 picks a token, T = 4096 tokens: ~768 rows an expert): one cuBLAS GEMM per expert
// on the BLAS lanes (BlasHandle::Lane, the training path's baseline) against all experts in one
// cublasGemmGroupedBatchedEx call (GroupedBatchedGemm), in the same run on the same bf16
// operands, for the three product shapes of a projection: forward y = x · wᵀ, input gradient
// dx = dy · w, weight gradient dw = dyᵀ · x. One JSON line per (product, kernel):
// {"product", "kernel", "ms", "tflops"}, then {"product", "grouped_over_lanes", "max_abs_diff"}
// (the two results compared element by element).
//
//   cuda_moe_train_gemm_bench [TOKENS=4096] [ITERS=20]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "bench/cuda_bench_common.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/device.h"

namespace v4rl {
namespace {

namespace kc = kernels::cuda;
using bench::Check;
using bench::RandomDevice;
using bench::TimeMs;
using core::DType;
using core::Tensor;

constexpr int64_t kExperts = 32, kPicks = 6, kHidden = 2048, kInter = 1024;

// Row offsets [E + 1] of `rows` picks spread over the experts at random (uneven, as routing).
std::vector<int64_t> RandomOffsets(int64_t rows, uint64_t seed) {
  const core::Rng rng(seed);
  std::vector<double> share(kExperts);
  double total = 0;
  for (int64_t e = 0; e < kExperts; ++e) total += (share[e] = 0.5 + rng.UniformDouble(e));
  std::vector<int64_t> offsets(kExperts + 1, 0);
  for (int64_t e = 0; e < kExperts; ++e) {
    offsets[e + 1] =
        e + 1 == kExperts
            ? rows
            : std::min<int64_t>(rows, offsets[e] + std::llround(rows * share[e] / total));
  }
  return offsets;
}

double MaxAbsDiff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = Tensor::CopyOf(a.view()).ToFloatVector();
  const std::vector<float> y = Tensor::CopyOf(b.view()).ToFloatVector();
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max<double>(worst, std::abs(x[i] - y[i]));
  return worst;
}

int Main(int argc, char** argv) {
  const int64_t tokens = argc > 1 ? std::stoll(argv[1]) : 4096;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 20;
  const int64_t rows = tokens * kPicks;
  const std::vector<int64_t> offsets = RandomOffsets(rows, 7);
  auto handle = kc::BlasHandle::Create(kc::GemmMath::kBf16Inputs);
  Check(handle.status(), "blas");
  kc::BlasHandle& blas = **handle;

  const Tensor x = RandomDevice(DType::kBF16, {rows, kHidden}, 1, 1.0f);
  const Tensor w = RandomDevice(DType::kBF16, {kExperts, kInter, kHidden}, 2, 0.02f);
  const Tensor dy = RandomDevice(DType::kBF16, {rows, kInter}, 3, 1.0f);

  // Each product: per-expert problems (row-major, as GemmProblem) and its output.
  struct Product {
    std::string name;
    bool trans_a, trans_b;
    core::Shape out_shape;
    std::vector<kc::GemmProblem> problems;  // filled with the output pointer below
  };
  std::vector<Product> products = {
      {"forward y = x wT", false, true, {rows, kInter}, {}},
      {"input grad dx = dy w", false, false, {rows, kHidden}, {}},
      {"weight grad dw = dyT x", true, false, {kExperts, kInter, kHidden}, {}},
  };
  const auto bf16_at = [](const Tensor& t, int64_t elements) {
    return static_cast<const char*>(t.view().data) + 2 * elements;
  };
  for (Product& product : products) {
    Tensor lanes_out = Tensor::Empty(DType::kF32, product.out_shape, kc::DeviceAllocator());
    Tensor grouped_out = Tensor::Empty(DType::kF32, product.out_shape, kc::DeviceAllocator());
    auto problems_into = [&](const Tensor& out) {
      std::vector<kc::GemmProblem> problems;
      for (int64_t e = 0; e < kExperts; ++e) {
        const int64_t r0 = offsets[e], r = offsets[e + 1] - offsets[e];
        kc::GemmProblem p;
        float* c = static_cast<float*>(out.view().data);
        if (product.name[0] == 'f') {  // [r, H] · [I, H]ᵀ -> [r, I]
          p = {bf16_at(x, r0 * kHidden),
               bf16_at(w, e * kInter * kHidden),
               c + r0 * kInter,
               r,
               kInter,
               kHidden,
               kHidden,
               kHidden,
               kInter};
        } else if (product.name[0] == 'i') {  // [r, I] · [I, H] -> [r, H]
          p = {bf16_at(dy, r0 * kInter),
               bf16_at(w, e * kInter * kHidden),
               c + r0 * kHidden,
               r,
               kHidden,
               kInter,
               kInter,
               kHidden,
               kHidden};
        } else {  // [r, I]ᵀ · [r, H] -> [I, H]
          p = {bf16_at(dy, r0 * kInter),
               bf16_at(x, r0 * kHidden),
               c + e * kInter * kHidden,
               kInter,
               kHidden,
               r,
               kInter,
               kHidden,
               kHidden};
        }
        problems.push_back(p);
      }
      return problems;
    };
    const std::vector<kc::GemmProblem> lane_problems = problems_into(lanes_out);
    const std::vector<kc::GemmProblem> grouped_problems = problems_into(grouped_out);
    double flops = 0;
    for (const kc::GemmProblem& p : lane_problems) flops += 2.0 * p.m * p.n * p.k;
    const auto run_lanes = [&] {
      for (int64_t e = 0; e < kExperts; ++e) {
        const kc::GemmProblem& p = lane_problems[e];
        kc::BatchedGemmParams params;
        params.a = {p.a, DType::kBF16, p.lda, 0};
        params.b = {p.b, DType::kBF16, p.ldb, 0};
        params.c = p.c;
        params.ldc = p.ldc;
        params.m = p.m, params.n = p.n, params.k = p.k;
        params.trans_a = product.trans_a, params.trans_b = product.trans_b;
        Check(kc::BatchedGemm(blas.Lane(static_cast<int>(e)), params), "lane gemm");
      }
    };
    const auto run_grouped = [&] {
      Check(kc::GroupedBatchedGemm(blas, grouped_problems, DType::kF32, product.trans_a,
                                   product.trans_b, 1.0f, 0.0f),
            "grouped gemm");
    };
    const double lanes_ms = TimeMs(iters, run_lanes);
    const double grouped_ms = TimeMs(iters, run_grouped);
    for (const auto& [kernel, ms] :
         {std::pair<const char*, double>{"cublas per expert on 4 lanes", lanes_ms},
          std::pair<const char*, double>{"cublasGemmGroupedBatchedEx", grouped_ms}}) {
      std::printf("{\"product\": \"%s\", \"kernel\": \"%s\", \"ms\": %.3f, \"tflops\": %.1f}\n",
                  product.name.c_str(), kernel, ms, flops / (ms * 1e-3) / 1e12);
    }
    std::printf("{\"product\": \"%s\", \"grouped_over_lanes\": %.3f, \"max_abs_diff\": %.3g}\n",
                product.name.c_str(), lanes_ms / grouped_ms, MaxAbsDiff(lanes_out, grouped_out));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
