// The decode step's routed-expert GEMMs at the "mid" config's shapes (32 experts of 1024, hidden
// 2048, 6 picks a token): GroupedGemmDeviceOffsets (kernels/cuda/grouped_gemm.h) with each tile
// (16x64, 64x128, the Hopper TMA + wgmma kernel, and kAuto's pick) against cuBLASLt per expert
// (GroupedGemm in gemm.h, host offsets: the baseline) in the same run, for decode batches of B
// tokens with random distinct picks. One JSON line per (batch, GEMM, kernel): {"batch", "gemm",
// "kernel", "us", "gb_per_s", "of_copy", "vs_cublas"}; bytes = the weights of the experts that
// got rows + the activations read and written; of_copy = that bandwidth over the
// device-to-device copy bandwidth measured first. Then the gate, up and clamped SwiGLU of the
// decode step ("gemm": "w1 + w3 + SwiGLU") as the three calls (GroupedGemmDeviceOffsets kAuto
// into bf16 gate and up, SwiGluClamp) and as GroupedGemmSwiGluDeviceOffsets (one wgmma launch),
// {"batch", "gemm", "kernel", "us", "gb_per_s", "of_copy", "vs_three_calls"}, bytes = both
// weight sets of the experts that got rows + x + the bf16 activation out.
//
//   cuda_moe_gemm_bench [BATCHES=1,64,256] [ITERS=50]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "bench/cuda_bench_common.h"
#include "core/tensor.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/grouped_gemm.h"

namespace v4rl {
namespace {

namespace kc = kernels::cuda;
using bench::Check;
using bench::RandomDevice;
using bench::TimeMs;
using core::DType;
using core::Tensor;

constexpr int64_t kExperts = 32, kPicks = 6, kHidden = 2048, kInter = 1024, kLayers = 4;

int Main(int argc, char** argv) {
  const std::vector<int64_t> batches = bench::ParseList(argc > 1 ? argv[1] : "1,64,256");
  const int iters = argc > 2 ? std::atoi(argv[2]) : 50;
  const double copy_gb_per_s = bench::CopyBandwidthGbPerS();
  std::printf("{\"kind\": \"copy\", \"gb_per_s\": %.1f}\n", copy_gb_per_s);
  auto handle = kc::GemmHandle::Create();
  Check(handle.status(), "cublas");
  // kLayers weight sets used in turn, as consecutive layers do, so that no call finds its
  // experts in L2 (50 MB) from the call before.
  std::vector<Tensor> w1, w2, w3;  // gate/up: N 1024, K 2048; down: N 2048, K 1024
  for (int64_t l = 0; l < kLayers; ++l) {
    w1.push_back(RandomDevice(DType::kBF16, {kExperts, kInter, kHidden}, 1 + 2 * l, 0.02f));
    w2.push_back(RandomDevice(DType::kBF16, {kExperts, kHidden, kInter}, 2 + 2 * l, 0.02f));
    w3.push_back(RandomDevice(DType::kBF16, {kExperts, kInter, kHidden}, 101 + l, 0.02f));
  }
  const float limit = 10.0f;  // the mid config's swiglu_limit
  for (const int64_t batch : batches) {
    const std::vector<int64_t> counts =
        bench::RandomExpertCounts(batch, kExperts, kPicks, 100 + batch);
    const bench::ExpertOffsets expert_offsets = bench::ExpertOffsetsOf(counts);
    const std::vector<int64_t>& offsets = expert_offsets.host;
    const Tensor& d_offsets = expert_offsets.device;
    const int64_t rows = offsets.back();
    const int64_t used =
        std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; });
    const Tensor x = RandomDevice(DType::kBF16, {rows, kHidden}, 3, 1.0f);
    const Tensor h = RandomDevice(DType::kBF16, {rows, kInter}, 4, 1.0f);
    const Tensor gate = Tensor::Empty(DType::kBF16, {rows, kInter}, kc::DeviceAllocator());
    const Tensor down = Tensor::Empty(DType::kF32, {rows, kHidden}, kc::DeviceAllocator());
    struct Gemm {
      const char* name;
      const Tensor& in;
      const std::vector<Tensor>& w;
      const Tensor& out;
      int64_t out_bytes;
    };
    for (const Gemm& g : {Gemm{"w1 [rows,2048]x[1024,2048]^T bf16", x, w1, gate, 2},
                          Gemm{"w2 [rows,1024]x[2048,1024]^T f32", h, w2, down, 4}}) {
      const int64_t n = g.w[0].size(1), k = g.w[0].size(2);
      int64_t call = 0;
      auto next_w = [&] { return g.w[call++ % kLayers].view(); };
      const double bytes = 2.0 * used * n * k + 2.0 * rows * k + double(g.out_bytes) * rows * n;
      const double cublas_us =
          1e3 * TimeMs(iters, [&] {
            Check(kc::GroupedGemm(**handle, g.in.view(), next_w(), offsets, g.out.view()),
                  "cublas");
          });
      auto report = [&](const char* kernel, double us) {
        const double gb_per_s = bytes / us / 1e3;
        std::printf(
            "{\"batch\": %lld, \"gemm\": \"%s\", \"kernel\": \"%s\", \"us\": %.1f, "
            "\"gb_per_s\": %.0f, \"of_copy\": %.3f, \"vs_cublas\": %.2f}\n",
            static_cast<long long>(batch), g.name, kernel, us, gb_per_s, gb_per_s / copy_gb_per_s,
            cublas_us / us);
      };
      report("cublaslt per expert (baseline)", cublas_us);
      for (const auto& [tile, name] :
           {std::pair{kc::GroupedGemmTile::kSmall16x64, "device offsets 16x64"},
            std::pair{kc::GroupedGemmTile::kWide64x128, "device offsets 64x128"},
            std::pair{kc::GroupedGemmTile::kWgmma, "device offsets wgmma"},
            std::pair{kc::GroupedGemmTile::kAuto, "device offsets auto"}}) {
        report(name, 1e3 * TimeMs(iters, [&] {
                       Check(kc::GroupedGemmDeviceOffsets(g.in.view(), next_w(), d_offsets.view(),
                                                          g.out.view(), tile),
                             name);
                     }));
      }
      std::fflush(stdout);
    }
    // w1 + w3 + SwiGLU: the decode step's three calls against the fused kernel.
    const Tensor up = Tensor::Empty(DType::kBF16, {rows, kInter}, kc::DeviceAllocator());
    const double swiglu_bytes =
        2.0 * 2.0 * used * kInter * kHidden + 2.0 * rows * kHidden + 2.0 * rows * kInter;
    int64_t call = 0;
    const double three_us =
        1e3 * TimeMs(iters, [&] {
          const int64_t l = call++ % kLayers;
          Check(kc::GroupedGemmDeviceOffsets(x.view(), w1[l].view(), d_offsets.view(), gate.view()),
                "w1");
          Check(kc::GroupedGemmDeviceOffsets(x.view(), w3[l].view(), d_offsets.view(), up.view()),
                "w3");
          Check(kc::SwiGluClamp(gate.view(), up.view(), limit, gate.view()), "swiglu");
        });
    auto report_swiglu = [&](const char* kernel, double us) {
      const double gb_per_s = swiglu_bytes / us / 1e3;
      std::printf(
          "{\"batch\": %lld, \"gemm\": \"w1 + w3 + SwiGLU\", \"kernel\": \"%s\", \"us\": %.1f, "
          "\"gb_per_s\": %.0f, \"of_copy\": %.3f, \"vs_three_calls\": %.2f}\n",
          static_cast<long long>(batch), kernel, us, gb_per_s, gb_per_s / copy_gb_per_s,
          three_us / us);
    };
    report_swiglu("three calls (w1, w3 auto; SwiGluClamp)", three_us);
    if (kc::GroupedGemmSwiGluApplies(x.view(), w1[0].view(), w3[0].view())) {
      report_swiglu("fused wgmma (GroupedGemmSwiGluDeviceOffsets)",
                    1e3 * TimeMs(iters, [&] {
                      const int64_t l = call++ % kLayers;
                      Check(
                          kc::GroupedGemmSwiGluDeviceOffsets(x.view(), w1[l].view(), w3[l].view(),
                                                             d_offsets.view(), limit, gate.view()),
                          "fused");
                    }));
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
