// Forward + backward tokens/s of v4rl's GPU training path (model/backward_cuda.h: forward, next-
// token cross entropy and backward on the device, f32 storage; GEMMs in exact f32, then on bf16
// tensor cores) on a random
// model of a config (configs/models/mid.json: issue 9's "mid"), with model FLOPs utilisation:
// FLOPs per token from model/flops.h over the bf16 dense GEMM peak measured in the same run.
// Writes the checkpoint bench/cuda_train_baseline.py times transformers on.
//
//   cuda_train_bench CONFIG_JSON OUT_DIR [SEQ_LEN=4096] [BATCH=1] [STEPS=3] [MODES=fp32,bf16]
//
// Prints JSON lines:
//  - {"kind": "peak", "tflops"}: the best of 5 bf16 cuBLASLt GEMMs of 8192^3 (fp32 accumulation);
//  - {"kind": "flops", "forward_per_token", "training_per_token", "formula"} (model/flops.h);
//  - {"kind": "train", "precision", "batch", "seq_len", "ms", "tokens_per_s", "tflops", "mfu"}
//    per GEMM arithmetic ("fp32 reference", then "bf16 GEMMs"):
//    STEPS timed steps after one warm-up, each forward + loss + backward with the gradients left
//    on the device (CudaMaskedNextTokenLossOnDevice; torch's stay on the device too; `v4rl sft
//    --device cuda` copies them to its host optimizer on top; the optimizer not included).
// OUT_DIR "-" skips the checkpoint. Token t of each row is (7919 t + 13 + row) mod V.
// MODES picks the GEMM arithmetics to time (fp32, bf16 or both). PROFILE_TRAIN=1 adds one untimed
// step of each mode between cudaProfilerStart and cudaProfilerStop, for
// `ncu --profile-from-start off` (scripts/ncu_kernel_table.py sums its launches by kernel).
#include <cuda_profiler_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_split.h"
#include "bench/bench_common.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "model/backward_cuda.h"
#include "model/config.h"
#include "model/flops.h"

namespace v4rl {
namespace {

using bench::Check;
using bench::Seconds;

// The best of a few 8192^3 bf16 GEMMs through cuBLASLt, in TFLOP/s.
double MeasureBf16Peak() {
  namespace kc = kernels::cuda;
  constexpr int64_t kN = 8192;
  auto gemm = kc::GemmHandle::Create();
  Check(gemm.status(), "gemm handle");
  const core::Tensor a = core::Tensor::Zeros(core::DType::kBF16, {kN, kN});
  core::Tensor x = core::Tensor::Empty(core::DType::kBF16, {kN, kN}, kc::DeviceAllocator());
  core::Tensor w = core::Tensor::Empty(core::DType::kBF16, {kN, kN}, kc::DeviceAllocator());
  core::Tensor y = core::Tensor::Empty(core::DType::kBF16, {kN, kN}, kc::DeviceAllocator());
  Check(kc::Copy(a.view(), x.view()), "upload");
  Check(kc::Copy(a.view(), w.view()), "upload");
  Check(kc::Gemm(**gemm, x.view(), w.view(), y.view()), "gemm");
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    Check(kc::Synchronize(), "sync");
    const auto start = std::chrono::steady_clock::now();
    Check(kc::Gemm(**gemm, x.view(), w.view(), y.view()), "gemm");
    Check(kc::Synchronize(), "sync");
    best = std::max(best, 2.0 * kN * kN * kN / Seconds(start) / 1e12);
  }
  return best;
}

int Main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: cuda_train_bench CONFIG_JSON OUT_DIR [SEQ_LEN] [BATCH] [STEPS] "
                 "[MODES=fp32,bf16]\n");
    return 2;
  }
  auto config = model::LoadModelConfig(argv[1]);
  Check(config.status(), "config");
  const std::string out_dir = argv[2];
  const int64_t seq_len = argc > 3 ? std::stoll(argv[3]) : 4096;
  const int64_t batch = argc > 4 ? std::stoll(argv[4]) : 1;
  const int64_t steps = argc > 5 ? std::stoll(argv[5]) : 3;
  const std::string wanted_modes = argc > 6 ? argv[6] : "fp32,bf16";
  for (const absl::string_view mode : absl::StrSplit(wanted_modes, ',')) {
    if (mode != "fp32" && mode != "bf16") {
      std::fprintf(stderr, "cuda_train_bench: MODES \"%s\": each mode must be fp32 or bf16\n",
                   wanted_modes.c_str());
      return 2;
    }
  }
  const char* profile_env = std::getenv("PROFILE_TRAIN");
  const bool profile_one_step = profile_env != nullptr && std::string(profile_env) == "1";

  const double peak = MeasureBf16Peak();
  std::printf("{\"kind\": \"peak\", \"tflops\": %.1f}\n", peak);
  const model::ForwardFlops flops = model::ForwardFlopsPerToken(*config, seq_len);
  std::printf(
      "{\"kind\": \"flops\", \"forward_per_token\": %.6e, \"training_per_token\": %.6e, "
      "\"formula\": \"%s\"}\n",
      flops.forward(), flops.training(), model::ForwardFlopsFormula().c_str());
  std::fflush(stdout);

  const model::Model model = bench::RandomBenchModel(*config, out_dir);
  core::Tensor ids = core::Tensor::Empty(core::DType::kI32, {batch, seq_len});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      ids.data<int32_t>()[b * seq_len + t] =
          static_cast<int32_t>((7919 * t + 13 + b) % config->vocab_size);
    }
  }
  const core::Tensor mask = model::NextTokenLossMask(batch, seq_len);
  const struct {
    kernels::cuda::GemmMath math;
    const char* name;
    const char* label;
  } modes[] = {{kernels::cuda::GemmMath::kExactF32, "fp32", "fp32 reference"},
               {kernels::cuda::GemmMath::kBf16Inputs, "bf16", "bf16 GEMMs"}};
  for (const auto& mode : modes) {
    if (("," + wanted_modes + ",").find(std::string(",") + mode.name + ",") == std::string::npos) {
      continue;
    }
    auto gpu = model::CudaBackward::Create(model, mode.math);
    Check(gpu.status(), "upload");
    // The gradients stay on the device, as torch's do.
    model::ForwardOptions forward_options;
    auto step = [&] {
      model::ModelWeights grads;
      auto loss = model::CudaMaskedNextTokenLossOnDevice(**gpu, model, ids.view(), mask.view(),
                                                         forward_options, &grads);
      Check(loss.status(), "train step");
      return *loss;
    };
    step();  // warm-up: allocator, cuBLAS
    if (profile_one_step) {
      cudaProfilerStart();
      step();
      Check(kernels::cuda::Synchronize(), "sync");
      cudaProfilerStop();
    }
    const auto start = std::chrono::steady_clock::now();
    double loss = 0;
    for (int64_t s = 0; s < steps; ++s) loss = step();
    const double ms = Seconds(start) * 1e3 / static_cast<double>(steps);
    const double tokens_per_s = static_cast<double>(batch * seq_len) / (ms * 1e-3);
    const double tflops = tokens_per_s * flops.training() / 1e12;
    std::printf(
        "{\"kind\": \"train\", \"precision\": \"%s\", \"batch\": %lld, "
        "\"seq_len\": %lld, \"ms\": %.1f, \"tokens_per_s\": %.0f, \"tflops\": %.1f, "
        "\"mfu\": %.4f, \"loss\": %.4f}\n",
        mode.label, static_cast<long long>(batch), static_cast<long long>(seq_len), ms,
        tokens_per_s, tflops, tflops / peak, loss);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
