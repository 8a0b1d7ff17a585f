// Times one Muon step on the GPU over every Muon matrix of a model config (kernels/cuda/
// optimizer.h: momentum, Nesterov, the hybrid Newton-Schulz in bf16 cuBLAS GEMMs batched over
// each parameter's experts, update scaling and decoupled weight decay). Prints one
// "muon_param NAME COUNT ROWS COLS" line per parameter, then "v4rl_muon_ms MS" and the
// Newton-Schulz FLOP rate; bench/cuda_muon_bench.sh feeds the lines to the PyTorch baseline
// (bench/cuda_muon_baseline.py: the same iteration over the same shapes) and prints the ratio.
//
//   cuda_muon_bench CONFIG [STEPS=5] [PRECISION=bf16|f32]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/optimizer.h"
#include "learner/optimizer.h"
#include "model/config.h"
#include "model/params.h"

namespace v4rl {
namespace {

namespace kc = kernels::cuda;
using bench::Check;
using core::DType;
using core::Tensor;

// Fills a device f32 tensor by tiling one host block of N(0, stddev) values (or zeros).
void Fill(const Tensor& device, const Tensor& block) {
  const core::TensorView flat = device.view().Reshape({device.numel()});
  const int64_t chunk = block.numel();
  for (int64_t begin = 0; begin < device.numel(); begin += chunk) {
    const int64_t n = std::min(chunk, device.numel() - begin);
    Check(kc::Copy(block.view().Slice(0, 0, n), flat.Slice(0, begin, begin + n)), "upload");
  }
}

struct MuonMatrix {
  std::string name;
  int64_t count, rows, cols;
  Tensor value, grad, momentum;
};

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: cuda_muon_bench CONFIG [STEPS=5] [PRECISION=bf16|f32]\n");
    return 2;
  }
  const int steps = argc > 2 ? std::atoi(argv[2]) : 5;
  const bool bf16 = argc > 3 ? std::string(argv[3]) != "f32" : true;
  auto config = model::LoadModelConfig(argv[1]);
  Check(config.status(), "config");
  auto device = kc::DeviceDescription();
  Check(device.status(), "device");
  std::printf("device %s\n", device->c_str());

  Tensor noise = Tensor::Empty(DType::kF32, {1 << 22});
  core::Rng(1).FillNormal(noise.view(), 0.0f, 0.02f);
  Tensor zeros = Tensor::Zeros(DType::kF32, {1 << 22});
  std::vector<MuonMatrix> matrices;
  int64_t elements = 0;
  double ns_flops = 0;
  for (const model::ParamSpec& spec : model::ModelParamSpecs(*config, /*include_mtp=*/false)) {
    const learner::ParameterAssignment a = learner::AssignOptimizer(spec.name, spec.shape);
    if (a.kind != learner::OptimizerKind::kMuon || spec.is_index_table) continue;
    MuonMatrix m{spec.name, a.num_matrices, a.rows, a.cols, {}, {}, {}};
    const core::Shape shape = {a.num_matrices, a.rows, a.cols};
    m.value = Tensor::Empty(DType::kF32, shape, kc::DeviceAllocator());
    m.grad = Tensor::Empty(DType::kF32, shape, kc::DeviceAllocator());
    m.momentum = Tensor::Empty(DType::kF32, shape, kc::DeviceAllocator());
    Fill(m.value, noise);
    Fill(m.grad, noise);
    Fill(m.momentum, zeros);
    elements += m.value.numel();
    const double n = std::min(a.rows, a.cols), w = std::max(a.rows, a.cols);
    ns_flops += a.num_matrices * 10.0 * (4 * n * n * w + 2 * n * n * n);
    std::printf("muon_param %s %lld %lld %lld\n", spec.name.c_str(), (long long)a.num_matrices,
                (long long)a.rows, (long long)a.cols);
    matrices.push_back(std::move(m));
  }
  auto blas = kc::BlasHandle::Create();
  Check(blas.status(), "cublas");
  kc::MuonParams params;
  params.lr = 1e-3f;
  params.newton_schulz.bf16 = bf16;
  auto step = [&] {
    for (MuonMatrix& m : matrices) {
      Check(kc::MuonStep(**blas, m.value.view(), m.grad.view(), m.momentum.view(), params), "muon");
    }
  };
  step();  // warm-up (cuBLAS heuristics, the allocator pool)
  Check(kc::Synchronize(), "sync");
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) step();
  Check(kc::Synchronize(), "sync");
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() /
      steps;
  std::printf("precision %s\n", bf16 ? "bf16" : "f32");
  std::printf("matrices %zu parameters, %lld elements; Newton-Schulz %.3f TFLOP per step "
              "(10 x (4 n^2 m + 2 n^3) per matrix, n <= m)\n",
              matrices.size(), (long long)elements, ns_flops / 1e12);
  std::printf("v4rl_muon_ms %.3f\n", ms);
  std::printf("v4rl muon step: %.3f ms, %.1f TFLOP/s in Newton-Schulz\n", ms,
              ns_flops / (ms * 1e-3) / 1e12);
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
