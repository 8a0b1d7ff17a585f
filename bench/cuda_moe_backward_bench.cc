// The training step's routed-expert backward GEMMs at the "mid" config's shapes (32 experts of
// 1024, hidden 2048, 6 picks a token, T tokens): the Hopper grouped kernels
// (kernels/cuda/grouped_gemm.h GroupedGemmInputGradDeviceOffsets and
// GroupedGemmWeightGradDeviceOffsets, one launch for all experts) against cuBLAS per expert
// (kernels/cuda/linear_backward.h GroupedLinearBackward: the baseline, what the step ran before),
// in the same run on the same bf16 data, with the ratio:
//  - "u = dy·w2": the down projection's input gradient [P, 2048] · w2[e] -> [P, 1024] f32;
//  - "dx = dgate·w1 + dup·w3": the gate and up input gradients summed -> [P, 2048] f32 (the
//    baseline: two accumulating calls);
//  - "dw1 = dgateᵀ·x": [E, 1024, 2048] f32; "dw2 = dyᵀ·act": [E, 2048, 1024] f32.
// The experts' row counts come from random distinct picks (about 6T / 32 rows an expert).
// FLOPs: 2 · P · N · K a GEMM (twice that for the summed input gradient).
//
//   cuda_moe_backward_bench [TOKENS=4096] [ITERS=20]
//
// Prints one JSON line per (GEMM, kernel) {"gemm", "kernel", "us", "tflops", "vs_cublas"}.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "bench/bench_common.h"
#include "bench/cuda_bench_common.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/linear_backward.h"

namespace v4rl {
namespace {

namespace kc = kernels::cuda;
using bench::Check;
using bench::RandomDevice;
using bench::TimeMs;
using core::DType;
using core::Tensor;

constexpr int64_t kExperts = 32, kPicks = 6, kHidden = 2048, kInter = 1024;

int Main(int argc, char** argv) {
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 20;
  if (tokens < 1 || iters < 1) {
    std::fprintf(stderr, "usage: cuda_moe_backward_bench [TOKENS >= 1] [ITERS >= 1]\n");
    return 2;
  }
  if (kc::DeviceCount() == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  auto blas = kc::BlasHandle::Create();
  Check(blas.status(), "cublas");
  const bench::ExpertOffsets expert_offsets =
      bench::ExpertOffsetsOf(bench::RandomExpertCounts(tokens, kExperts, kPicks, 7 + tokens));
  const std::vector<int64_t>& offsets = expert_offsets.host;
  const Tensor& d_offsets = expert_offsets.device;
  const int64_t picks = offsets.back();

  const Tensor dy = RandomDevice(DType::kBF16, {picks, kHidden}, 1, 1.0f);
  const Tensor x = RandomDevice(DType::kBF16, {picks, kHidden}, 2, 1.0f);
  const Tensor dgate = RandomDevice(DType::kBF16, {picks, kInter}, 3, 1.0f);
  const Tensor dup = RandomDevice(DType::kBF16, {picks, kInter}, 4, 1.0f);
  const Tensor act = RandomDevice(DType::kBF16, {picks, kInter}, 5, 1.0f);
  const Tensor w1 = RandomDevice(DType::kBF16, {kExperts, kInter, kHidden}, 6, 0.02f);
  const Tensor w3 = RandomDevice(DType::kBF16, {kExperts, kInter, kHidden}, 7, 0.02f);
  const Tensor w2 = RandomDevice(DType::kBF16, {kExperts, kHidden, kInter}, 8, 0.02f);
  const Tensor u = Tensor::Empty(DType::kF32, {picks, kInter}, kc::DeviceAllocator());
  const Tensor dx = Tensor::Empty(DType::kF32, {picks, kHidden}, kc::DeviceAllocator());
  const Tensor dw1 = Tensor::Empty(DType::kF32, {kExperts, kInter, kHidden}, kc::DeviceAllocator());
  const Tensor dw2 = Tensor::Empty(DType::kF32, {kExperts, kHidden, kInter}, kc::DeviceAllocator());
  const core::TensorView none;
  const int64_t* host = offsets.data();

  struct Case {
    const char* gemm;
    double flops;
    std::function<absl::Status()> cublas, hopper;
    bool applies;
  };
  const Case cases[] = {
      {"u = dy·w2 [P,2048]x[E,2048,1024]", 2.0 * picks * kHidden * kInter,
       [&] {
         return kc::GroupedLinearBackward(**blas, none, w2.view(), dy.view(), host, u.view(), none,
                                          false);
       },
       [&] {
         return kc::GroupedGemmInputGradDeviceOffsets(dy.view(), w2.view(), none, none,
                                                      d_offsets.view(), u.view());
       },
       kc::GroupedGemmInputGradApplies(dy.view(), w2.view())},
      {"dx = dgate·w1 + dup·w3 [P,1024]x[E,1024,2048] x2", 4.0 * picks * kInter * kHidden,
       [&] {
         absl::Status s = kc::GroupedLinearBackward(**blas, none, w1.view(), dgate.view(), host,
                                                    dx.view(), none, false);
         if (!s.ok()) return s;
         return kc::GroupedLinearBackward(**blas, none, w3.view(), dup.view(), host, dx.view(),
                                          none, false);
       },
       [&] {
         return kc::GroupedGemmInputGradDeviceOffsets(dgate.view(), w1.view(), dup.view(),
                                                      w3.view(), d_offsets.view(), dx.view());
       },
       kc::GroupedGemmInputGradApplies(dgate.view(), w1.view())},
      {"dw1 = dgate^T·x [E,1024,2048]", 2.0 * picks * kInter * kHidden,
       [&] {
         return kc::GroupedLinearBackward(**blas, x.view(), w1.view(), dgate.view(), host, none,
                                          dw1.view(), true);
       },
       [&] {
         return kc::GroupedGemmWeightGradDeviceOffsets(dgate.view(), x.view(), d_offsets.view(),
                                                       dw1.view());
       },
       kc::GroupedGemmWeightGradApplies(dgate.view(), x.view(), dw1.view())},
      {"dw2 = dy^T·act [E,2048,1024]", 2.0 * picks * kHidden * kInter,
       [&] {
         return kc::GroupedLinearBackward(**blas, act.view(), w2.view(), dy.view(), host, none,
                                          dw2.view(), true);
       },
       [&] {
         return kc::GroupedGemmWeightGradDeviceOffsets(dy.view(), act.view(), d_offsets.view(),
                                                       dw2.view());
       },
       kc::GroupedGemmWeightGradApplies(dy.view(), act.view(), dw2.view())},
  };
  for (const Case& c : cases) {
    auto report = [&](const char* kernel, double us, double baseline_us) {
      std::printf(
          "{\"tokens\": %lld, \"gemm\": \"%s\", \"kernel\": \"%s\", \"us\": %.1f, "
          "\"tflops\": %.1f, \"vs_cublas\": %.2f}\n",
          static_cast<long long>(tokens), c.gemm, kernel, us, c.flops / us / 1e6, baseline_us / us);
    };
    const double cublas_us = 1e3 * TimeMs(iters, [&] { Check(c.cublas(), "cublas"); });
    report("cublas per expert (baseline)", cublas_us, cublas_us);
    if (c.applies) {
      report("hopper grouped", 1e3 * TimeMs(iters, [&] { Check(c.hopper(), "hopper"); }),
             cublas_us);
    } else {
      std::printf("{\"gemm\": \"%s\", \"kernel\": \"hopper grouped\", \"skipped\": true}\n",
                  c.gemm);
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
