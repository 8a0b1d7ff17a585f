// Prefill throughput of the whole-model CUDA forward (model/forward_cuda.h) on a random model of
// a config (configs/models/mid.json: issue 11's "mid" model), and the checkpoint plus logits that
// bench/cuda_prefill_baseline.py needs to time transformers on the same weights and compare.
//
//   cuda_prefill_bench CONFIG_JSON OUT_DIR TOKENS[,TOKENS...]
//
// Writes OUT_DIR/model (config.json + model.safetensors, transformers-loadable) and
// OUT_DIR/v4rl_logits.safetensors (input_ids [1, T0] and logits [1, T0, V] for the first length),
// then prints one JSON line per length: {"tokens", "ms", "tokens_per_s"} for one sequence of T
// tokens (token t = (7919 t + 13) mod V), logits of the last position only, mean of 2 timed
// runs after a warm-up run. Times include the host-side parts of the forward (MoE plans).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "core/safetensors.h"
#include "model/config.h"
#include "model/forward_cuda.h"

namespace v4rl {
namespace {

using bench::Check;
using bench::ParseList;
using bench::Seconds;

int Main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: cuda_prefill_bench CONFIG_JSON OUT_DIR TOKENS[,TOKENS...]\n");
    return 2;
  }
  auto config = model::LoadModelConfig(argv[1]);
  Check(config.status(), "config");
  const std::string out_dir = argv[2];
  const std::vector<int64_t> lengths = ParseList(argv[3]);

  const model::Model model = bench::RandomBenchModel(*config, out_dir);
  auto start = std::chrono::steady_clock::now();
  auto gpu = model::CudaModel::Create(model);
  Check(gpu.status(), "upload");
  std::fprintf(stderr, "upload: %.1f s, %.2f GB of weights on the device\n", Seconds(start),
               (*gpu)->weight_bytes() / 1e9);

  for (size_t n = 0; n < lengths.size(); ++n) {
    const int64_t tokens = lengths[n];
    core::Tensor ids = core::Tensor::Empty(core::DType::kI32, {1, tokens});
    for (int64_t t = 0; t < tokens; ++t) {
      ids.data<int32_t>()[t] = static_cast<int32_t>((7919 * t + 13) % config->vocab_size);
    }
    model::CudaForwardOptions options;
    if (n == 0) {
      // Full logits of the first length for the comparison with transformers.
      auto full = (*gpu)->Forward(ids.view(), options);
      Check(full.status(), "forward");
      Check(core::WriteSafetensors(out_dir + "/v4rl_logits.safetensors",
                                   {{"input_ids", ids.view()}, {"logits", full->logits.view()}}),
            "write logits");
    }
    options.last_position_logits = true;
    Check((*gpu)->Forward(ids.view(), options).status(), "warm-up");
    const int runs = 2;
    start = std::chrono::steady_clock::now();
    for (int r = 0; r < runs; ++r) Check((*gpu)->Forward(ids.view(), options).status(), "forward");
    const double ms = Seconds(start) * 1e3 / runs;
    std::printf("{\"tokens\": %lld, \"ms\": %.2f, \"tokens_per_s\": %.0f}\n",
                static_cast<long long>(tokens), ms, tokens / (ms * 1e-3));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
