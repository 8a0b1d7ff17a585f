// CPU reference forward speed: tokens/s of model::Forward on a small V4 model (every layer
// type, hash and top-k MoE, real ratios 4 / 128) and GFLOP/s of the fp32 Linear kernel, each with
// one thread and with all threads of the machine, and the ratio (issue 3's acceptance).
//
//   model_forward_bench [--tokens T] [--reps R]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/rng.h"
#include "core/thread_pool.h"
#include "kernels/ops.h"
#include "model/forward.h"
#include "model/params.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

ModelConfig BenchConfig() {
  ModelConfig c = TinyConfig();
  c.vocab_size = 8192;
  c.hidden_size = 512;
  c.num_heads = 8;
  c.head_dim = 128;
  c.rope_head_dim = 64;
  c.q_lora_rank = 256;
  c.o_groups = 4;
  c.o_lora_rank = 128;
  c.sliding_window = 128;
  c.hca_compress_ratio = 128;
  c.index_n_heads = 8;
  c.index_head_dim = 64;
  c.index_topk = 32;
  c.num_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.moe_intermediate_size = 256;
  return c;
}

Tensor Normal(const core::Shape& shape, uint64_t seed, float stddev) {
  Tensor t = Tensor::Empty(DType::kF32, shape);
  core::Rng(seed).FillNormal(t.view(), 0.0f, stddev);
  return t;
}

Model RandomModel(const ModelConfig& config) {
  ModelWeights weights;
  uint64_t seed = 1;
  VisitParams(config, &weights, false, [&](const ParamSpec& spec, Tensor* slot) {
    if (spec.is_index_table) {
      // Distinct experts per row: consecutive ids from the token id.
      *slot = Tensor::Empty(DType::kI32, spec.shape);
      for (int64_t r = 0; r < spec.shape[0]; ++r) {
        for (int64_t j = 0; j < spec.shape[1]; ++j) {
          slot->data<int32_t>()[r * spec.shape[1] + j] =
              static_cast<int32_t>((r + j) % config.num_routed_experts);
        }
      }
      return;
    }
    const float stddev = spec.shape.size() == 1 ? 0.1f : 1.0f / std::sqrt(float(spec.shape.back()));
    *slot = Normal(spec.shape, seed++, stddev);
    if (spec.name.find("norm") != std::string::npos) {
      for (int64_t i = 0; i < slot->numel(); ++i) slot->data<float>()[i] += 1.0f;
    }
  });
  return Model::Create(config, std::move(weights));
}

template <typename Fn>
double BestSeconds(int reps, Fn&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                              .count());
  }
  return best;
}

int Main(int argc, char** argv) {
  int64_t tokens = 512;
  int reps = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  }
  const int all_threads = std::max(1u, std::thread::hardware_concurrency());
  const ModelConfig config = BenchConfig();
  const Model model = RandomModel(config);
  Tensor ids = Tensor::Empty(DType::kI32, {1, tokens});
  for (int64_t t = 0; t < tokens; ++t) ids.data<int32_t>()[t] = (t * 7919) % config.vocab_size;
  const Tensor x = Normal({256, 1024}, 90, 1.0f);
  const Tensor w = Normal({1024, 1024}, 91, 1.0f);
  Tensor y = Tensor::Empty(DType::kF32, {256, 1024});
  const double linear_flops = 2.0 * 256 * 1024 * 1024;

  std::printf("model: H=%lld, %lld layers (sliding/CSA/HCA/CSA, ratios 4/128), %lld experts "
              "(top-%lld), V=%lld; %lld tokens\n",
              (long long)config.hidden_size, (long long)config.num_layers,
              (long long)config.num_routed_experts, (long long)config.num_experts_per_tok,
              (long long)config.vocab_size, (long long)tokens);
  double tokens_per_second[2], gflops[2];
  const int thread_counts[2] = {1, all_threads};
  for (int i = 0; i < 2; ++i) {
    core::ThreadPool pool(thread_counts[i]);
    kernels::ScopedOpsThreadPool scope(&pool);
    const double forward = BestSeconds(reps, [&] {
      if (!Forward(model, ids.view()).ok()) std::abort();
    });
    const double linear = BestSeconds(reps, [&] { kernels::Linear(x.view(), w.view(), y.view()); });
    tokens_per_second[i] = tokens / forward;
    gflops[i] = linear_flops / linear / 1e9;
    std::printf("%2d thread(s): forward %8.1f tokens/s   linear [256x1024]x[1024x1024] %6.2f "
                "GFLOP/s\n",
                thread_counts[i], tokens_per_second[i], gflops[i]);
  }
  std::printf("ratio all/one thread: forward %.2fx, linear %.2fx (%d threads)\n",
              tokens_per_second[1] / tokens_per_second[0], gflops[1] / gflops[0], all_threads);
  return 0;
}

}  // namespace
}  // namespace v4rl::model

int main(int argc, char** argv) { return v4rl::model::Main(argc, argv); }
