// Publishing a weight version to a Rollout service on loopback: the path update (the learner
// writes the model directory, the worker's UpdateWeights loads it) against the stream update
// (StreamWeights with the bytes in the call), for the tiny model and a ~80M-parameter one. Server
// and client share this process (and its cores), as on one host. Prints seconds (best of --reps)
// and the ratio stream / path.
//
//   weight_publish_bench [--reps R] [--dir DIR]   (DIR: where the model directories go; /tmp)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "grpcpp/grpcpp.h"
#include "model/forward.h"
#include "model/init.h"
#include "model/params.h"
#include "model/save.h"
#include "protos/server_service.h"
#include "rollout/rollout_service.h"
#include "rollout/weight_stream.h"

namespace v4rl::rollout {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ~80M parameters: a 32k vocabulary at H = 512 and four layers of 16 experts of width 512.
model::ModelConfig MediumConfig() {
  model::ModelConfig c = model::TinyConfig();
  c.vocab_size = 32768;
  c.hidden_size = 512;
  c.num_heads = 8;
  c.head_dim = 128;
  c.rope_head_dim = 64;
  c.q_lora_rank = 256;
  c.o_groups = 4;
  c.o_lora_rank = 128;
  c.sliding_window = 128;
  c.index_n_heads = 8;
  c.index_head_dim = 64;
  c.index_topk = 32;
  c.num_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.moe_intermediate_size = 512;
  return c;
}

int64_t NumParams(const model::ModelConfig& config) {
  int64_t total = 0;
  for (const model::ParamSpec& spec : model::ModelParamSpecs(config, false)) {
    int64_t numel = 1;
    for (const int64_t d : spec.shape) numel *= d;
    total += numel;
  }
  return total;
}

int Run(const char* label, const model::ModelConfig& config, int reps, const std::string& root) {
  const model::Model initial =
      model::RandomModel(config, {.scheme = model::InitScheme::kExercise, .seed = 1});
  const model::Model next =
      model::RandomModel(config, {.scheme = model::InitScheme::kExercise, .seed = 2});
  auto service = RolloutServiceImpl::Create(initial, 0, {});
  if (!service.ok()) return std::fprintf(stderr, "%s\n", service.status().ToString().c_str()), 1;
  auto running = protos::StartServer({service->get()});
  if (!running.ok()) return std::fprintf(stderr, "%s\n", running.status().ToString().c_str()), 1;
  auto stub = v4rl::RolloutService::NewStub(
      grpc::CreateChannel(running->address(), grpc::InsecureChannelCredentials()));
  const double mb = NumParams(config) * 4.0 / (1 << 20);
  double best_save = 1e30, best_load = 1e30, best_stream_1m = 1e30, best_stream_max = 1e30;
  int64_t version = 0;
  for (int rep = 0; rep < reps; ++rep) {
    // Path: the learner writes the directory, the worker loads it.
    const std::string dir = root + "/weight_publish_bench/version-" + std::to_string(++version);
    std::filesystem::remove_all(dir);
    double start = Now();
    if (absl::Status saved = model::SaveModel(dir, config, next.weights); !saved.ok()) {
      return std::fprintf(stderr, "%s\n", saved.ToString().c_str()), 1;
    }
    best_save = std::min(best_save, Now() - start);
    {
      grpc::ClientContext context;
      UpdateWeightsRequest request;
      request.set_checkpoint_dir(dir);
      request.set_version(version);
      UpdateWeightsResponse response;
      start = Now();
      const grpc::Status status = stub->UpdateWeights(&context, request, &response);
      if (!status.ok()) return std::fprintf(stderr, "%s\n", status.error_message().c_str()), 1;
      best_load = std::min(best_load, Now() - start);
    }
    std::filesystem::remove_all(dir);
    // Stream, with the learner's default chunk (1 MiB) and the largest one.
    for (const int64_t chunk : {int64_t{1} << 20, kMaxWeightChunkBytes}) {
      grpc::ClientContext context;
      UpdateWeightsResponse response;
      start = Now();
      const grpc::Status status =
          SendWeightStream(stub.get(), &context, config, next.weights, ++version, chunk, &response);
      if (!status.ok()) return std::fprintf(stderr, "%s\n", status.error_message().c_str()), 1;
      double& best = chunk == kMaxWeightChunkBytes ? best_stream_max : best_stream_1m;
      best = std::min(best, Now() - start);
    }
  }
  running->server->Shutdown();
  std::printf(
      "%-6s %6.1fM params %7.1f MiB f32 | path: save %.3f s + UpdateWeights %.3f s = %.3f s | "
      "stream (1 MiB chunks) %.3f s (%.0f MiB/s), (%.1f MiB chunks) %.3f s | stream/path "
      "%.2f, stream/UpdateWeights %.2f\n",
      label, NumParams(config) / 1e6, mb, best_save, best_load, best_save + best_load,
      best_stream_1m, mb / best_stream_1m, kMaxWeightChunkBytes / double(1 << 20), best_stream_max,
      best_stream_1m / (best_save + best_load), best_stream_1m / best_load);
  return 0;
}

}  // namespace
}  // namespace v4rl::rollout

int main(int argc, char** argv) {
  int reps = 3;
  std::string root = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--dir") == 0) root = argv[i + 1];
  }
  if (int rc = v4rl::rollout::Run("tiny", v4rl::model::TinyConfig(), reps, root); rc != 0) {
    return rc;
  }
  return v4rl::rollout::Run("medium", v4rl::rollout::MediumConfig(), reps, root);
}
