// Long-prompt prefill and batched decode of the CUDA decoder (model/decode_cuda.h) on a random
// model of a config (configs/models/mid.json: issue 11's "mid" model), plus the checkpoint that
// bench/cuda_decode_baseline.py needs to time transformers on the same weights.
//
//   cuda_decode_bench CONFIG_JSON OUT_DIR PREFILL_TOKENS[,..] DECODE_BATCHES[,..] [CHUNK=8192]
//       [DECODE_CONTEXT=4096] [DECODE_STEPS=16]
//
// Prints JSON lines:
//  - {"kind": "copy", "gb_per_s"}: device-to-device cudaMemcpy bandwidth ((read + write) / time,
//    1 GiB, best of 3), the HBM figure the decode bound uses;
//  - {"kind": "prefill", "tokens", "ms", "tokens_per_s", "chunk"}: one sequence of T tokens (token
//    t = (7919 t + 13) mod V, as bench/cuda_prefill_bench.cc) prefilled through CudaDecoder in
//    chunks of CHUNK tokens (device memory bounded by the chunk, not by T), one timed run;
//  - {"kind": "decode", "batch", "context", "ms_per_step", "tokens_per_s", "weight_bytes",
//    "bound_tokens_per_s", "fraction_of_bound", "host_ms_per_step", "max_expert_rows"}: B sequences
//    forked from one prefilled DECODE_CONTEXT-token prompt, DECODE_STEPS one-token steps timed
//    after 2 warm-up steps; weight_bytes = bytes of weights one step touches (every dense matrix,
//    the head, the routed experts the step's tokens picked, counted from its routing) and the bound
//    = batch / (weight_bytes / copy bandwidth); max_expert_rows: per MoE layer, the most rows one
//    expert got at that step (batch x top-k rows in all; the grouped GEMMs' slowest expert); Decode
//    steps replay CUDA graphs (CudaDecodeStepOptions::cuda_graphs; the first step records);
//  - {"kind": "decode_no_graphs", "batch", "ms_per_step", "tokens_per_s", "host_ms_per_step",
//    "graphs_speedup"}: the same steps launch by launch right after, and the graphs' ratio;
//  - {"kind": "decode_host_moe", "batch", "ms_per_step", "tokens_per_s"} with COMPARE_HOST_MOE=1:
//    the same decode steps with the MoE plan built on the host (one sync per layer);
//  - {"kind": "decode_long", "context", "ms_per_step", "tokens_per_s", "host_ms_per_step"}: batch-1
//    decode after the longest prefill above.
// host_ms_per_step: the host's time inside Step() (near ms_per_step: the host is the bottleneck).
// PROFILE_DECODE=1 adds one untimed step to each batch's graph-replayed decode run (not to the
// single-stream run after the longest prompt, nor to the launch-by-launch or host-MoE runs)
// between cudaProfilerStart/Stop, for
// `ncu --profile-from-start off --print-summary per-kernel ...`.
// Times include the host-side parts (per-sequence launch setup, uploads, allocations); logits stay
// on the device unless HOST_LOGITS=1.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "bench/cuda_bench_common.h"
#include "kernels/cuda/device.h"
#include "model/config.h"
#include "model/decode_cuda.h"
#include "model/forward_cuda.h"

namespace v4rl {
namespace {

using bench::Check;
using bench::ParseList;
using bench::Seconds;

// bf16 bytes of a host f32 tensor on the device (matrices); f32 vectors count as stored.
int64_t DeviceBytes(const core::Tensor& t) {
  if (!t.defined()) return 0;
  return t.view().rank >= 2 ? t.numel() * 2 : t.numel() * 4;
}

int Main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: cuda_decode_bench CONFIG_JSON OUT_DIR PREFILL_TOKENS "
                         "DECODE_BATCHES [CHUNK] [DECODE_CONTEXT] [DECODE_STEPS]\n");
    return 2;
  }
  auto config = model::LoadModelConfig(argv[1]);
  Check(config.status(), "config");
  const std::string out_dir = argv[2];
  const std::vector<int64_t> lengths = ParseList(argv[3]);
  const std::vector<int64_t> batches = ParseList(argv[4]);
  const int64_t chunk = argc > 5 ? std::stoll(argv[5]) : 8192;
  const int64_t context = argc > 6 ? std::stoll(argv[6]) : 4096;
  const int64_t steps = argc > 7 ? std::stoll(argv[7]) : 16;
  // COMPARE_HOST_MOE=1: each decode batch also with the host-built MoE plan
  // (CudaDecodeStepOptions::device_moe_dispatch = false), a "decode_host_moe" row.
  const char* compare_env = std::getenv("COMPARE_HOST_MOE");
  const bool compare_host_moe = compare_env != nullptr && std::string(compare_env) == "1";
  const char* host_logits_env = std::getenv("HOST_LOGITS");
  const bool host_logits = host_logits_env != nullptr && std::string(host_logits_env) == "1";
  // PROFILE_DECODE=1: one extra untimed step of each batch's graph-replayed decode run between
  // cudaProfilerStart and cudaProfilerStop (ncu --profile-from-start off ... times just that
  // step's kernels).
  const char* profile_env = std::getenv("PROFILE_DECODE");
  const bool profile_one_step = profile_env != nullptr && std::string(profile_env) == "1";
  const int64_t vocab = config->vocab_size;

  const model::Model model = bench::RandomBenchModel(*config, out_dir);
  auto start = std::chrono::steady_clock::now();
  auto gpu = model::CudaModel::Create(model);
  Check(gpu.status(), "upload");
  std::fprintf(stderr, "%.2f GB of weights on the device\n", (*gpu)->weight_bytes() / 1e9);

  const double gb_per_s = bench::CopyBandwidthGbPerS();
  std::printf("{\"kind\": \"copy\", \"gb_per_s\": %.1f}\n", gb_per_s);
  std::fflush(stdout);

  // Weight bytes a decode step touches, apart from the routed experts.
  int64_t dense = DeviceBytes(model.weights.head) + DeviceBytes(model.weights.norm);
  int64_t expert_bytes = 0;
  for (const model::LayerWeights& l : model.weights.layers) {
    const model::AttentionWeights& a = l.attn;
    for (const core::Tensor* t : {&a.wq_a, &a.q_norm, &a.wq_b, &a.wkv, &a.kv_norm, &a.wo_a,
                                  &a.wo_b, &a.sink, &a.compressor.wkv, &a.compressor.wgate,
                                  &a.indexer.wq_b, &a.indexer.weights_proj,
                                  &a.indexer.compressor.wkv, &a.indexer.compressor.wgate,
                                  &l.ffn.gate, &l.ffn.shared_w1, &l.ffn.shared_w2,
                                  &l.ffn.shared_w3, &l.hc_attn.fn, &l.hc_ffn.fn}) {
      dense += DeviceBytes(*t);
    }
    expert_bytes = (DeviceBytes(l.ffn.w1) + DeviceBytes(l.ffn.w2) + DeviceBytes(l.ffn.w3)) /
                   config->num_routed_experts;
  }

  auto make_ids = [&](int64_t tokens) {
    std::vector<int32_t> ids(tokens);
    for (int64_t t = 0; t < tokens; ++t) ids[t] = static_cast<int32_t>((7919 * t + 13) % vocab);
    return ids;
  };
  // Prefills `ids` into `sequence` in chunks.
  auto prefill = [&](model::CudaDecoder& decoder, int64_t sequence,
                     const std::vector<int32_t>& ids) {
    for (int64_t first = 0; first < static_cast<int64_t>(ids.size()); first += chunk) {
      const int64_t count = std::min<int64_t>(chunk, ids.size() - first);
      const model::CudaDecodeInput input{sequence, absl::MakeConstSpan(ids.data() + first, count)};
      Check(decoder.Step(absl::MakeConstSpan(&input, 1)).status(), "prefill step");
    }
  };

  // Long prompts.
  const int64_t longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  int64_t pool_bytes = model::CudaDecoder::SequenceBytes(*config, std::max(longest, context) + 64) +
                       (int64_t{1} << 26);
  for (int64_t b : batches) {
    pool_bytes = std::max(pool_bytes, (b + 1) * (model::CudaDecoder::SequenceBytes(
                                                     *config, context + steps + 8) +
                                                 (int64_t{1} << 20)));
  }
  auto decoder = model::CudaDecoder::Create(gpu->get(), pool_bytes, int64_t{1} << 20);
  Check(decoder.status(), "decoder");
  {  // warm-up (cuBLASLt heuristics, allocator)
    auto s = (*decoder)->AddSequence(chunk + 8);
    Check(s.status(), "add");
    prefill(**decoder, *s, make_ids(std::min<int64_t>(chunk, 4096)));
    Check((*decoder)->RemoveSequence(*s), "remove");
  }
  int64_t long_sequence = -1;
  for (int64_t tokens : lengths) {
    if (long_sequence >= 0) Check((*decoder)->RemoveSequence(long_sequence), "remove");
    auto s = (*decoder)->AddSequence(tokens + 64);
    Check(s.status(), "add");
    const std::vector<int32_t> ids = make_ids(tokens);
    Check(kernels::cuda::Synchronize(), "sync");
    start = std::chrono::steady_clock::now();
    prefill(**decoder, *s, ids);
    const double ms = Seconds(start) * 1e3;
    std::printf("{\"kind\": \"prefill\", \"tokens\": %lld, \"ms\": %.2f, \"tokens_per_s\": %.0f, "
                "\"chunk\": %lld}\n",
                static_cast<long long>(tokens), ms, tokens / (ms * 1e-3),
                static_cast<long long>(chunk));
    std::fflush(stdout);
    long_sequence = *s;
  }

  // One-token decode steps for `handles`; returns ms per step, the step's weight bytes and the
  // host's ms per step inside Step() (close to the step time: the host is the bottleneck).
  // The most rows any one expert got in each MoE layer at the routed step (comma-separated).
  std::string expert_rows;
  auto decode = [&](const std::vector<int64_t>& handles, double* weight_bytes, double* host_ms,
                    bool device_moe = true, bool graphs = true, bool profile = false) {
    std::vector<int32_t> tokens(handles.size());
    double host_seconds = 0;
    auto step = [&](int64_t j, bool routing) {
      std::vector<model::CudaDecodeInput> inputs;
      for (size_t i = 0; i < handles.size(); ++i) {
        tokens[i] = static_cast<int32_t>((31 * j + 17 * i + 5) % vocab);
        inputs.push_back({handles[i], absl::MakeConstSpan(&tokens[i], 1)});
      }
      model::CudaDecodeStepOptions options;
      options.return_routing = routing;
      options.device_moe_dispatch = device_moe;
      options.cuda_graphs = graphs;
      // Logits stay on the device, as `v4rl generate --device cuda` samples them there
      // (HOST_LOGITS=1: copied to the host every step, the bench's behaviour before).
      options.device_logits = !host_logits;
      const auto call = std::chrono::steady_clock::now();
      auto out = (*decoder)->Step(inputs, options);
      host_seconds += Seconds(call);
      Check(out.status(), "decode step");
      if (routing) {
        int64_t touched = 0;
        expert_rows.clear();
        for (const core::Tensor& ids : out->routed_experts) {
          std::map<int32_t, int64_t> rows;  // expert -> rows routed to it in this layer
          for (int64_t i = 0; i < ids.numel(); ++i) ++rows[ids.data<int32_t>()[i]];
          touched += static_cast<int64_t>(rows.size());
          int64_t most = 0;
          for (const auto& [expert, count] : rows) most = std::max(most, count);
          if (!expert_rows.empty()) expert_rows.push_back(',');
          expert_rows.append(std::to_string(most));
        }
        *weight_bytes = static_cast<double>(dense + touched * expert_bytes);
      }
    };
    step(0, true);
    step(1, false);
    Check(kernels::cuda::Synchronize(), "sync");
    if (profile) {  // PROFILE_DECODE=1: one step between cudaProfilerStart and Stop
      cudaProfilerStart();
      step(2, false);
      Check(kernels::cuda::Synchronize(), "sync");
      cudaProfilerStop();
    }
    host_seconds = 0;
    const auto begin = std::chrono::steady_clock::now();
    for (int64_t j = 0; j < steps; ++j) step(2 + j, false);
    *host_ms = host_seconds * 1e3 / steps;
    return Seconds(begin) * 1e3 / steps;
  };

  if (long_sequence >= 0) {
    double unused = 0, host_ms = 0;
    const double ms = decode({long_sequence}, &unused, &host_ms);
    std::printf(
        "{\"kind\": \"decode_long\", \"context\": %lld, \"ms_per_step\": %.3f, "
        "\"tokens_per_s\": %.1f, \"host_ms_per_step\": %.3f}\n",
        static_cast<long long>(longest), ms, 1e3 / ms, host_ms);
    std::fflush(stdout);
    Check((*decoder)->RemoveSequence(long_sequence), "remove");
  }

  for (int64_t batch : batches) {
    auto prompt = (*decoder)->AddSequence(context + (compare_host_moe ? 3 : 2) * (steps + 3) + 8);
    Check(prompt.status(), "add");
    prefill(**decoder, *prompt, make_ids(context));
    std::vector<int64_t> handles;
    for (int64_t b = 0; b < batch; ++b) {
      auto fork = (*decoder)->ForkSequence(*prompt);
      Check(fork.status(), "fork");
      handles.push_back(*fork);
    }
    double weight_bytes = 0, host_ms = 0;
    const double ms = decode(handles, &weight_bytes, &host_ms, /*device_moe=*/true,
                             /*graphs=*/true, /*profile=*/profile_one_step);
    const double tps = batch * 1e3 / ms;
    const double bound = batch / (weight_bytes / (gb_per_s * 1e9));
    std::printf(
        "{\"kind\": \"decode\", \"batch\": %lld, \"context\": %lld, \"ms_per_step\": "
        "%.3f, \"tokens_per_s\": %.0f, \"weight_bytes\": %.0f, \"bound_tokens_per_s\": "
        "%.0f, \"fraction_of_bound\": %.4f, \"host_ms_per_step\": %.3f, "
        "\"max_expert_rows\": \"%s\"}\n",
        static_cast<long long>(batch), static_cast<long long>(context), ms, tps, weight_bytes,
        bound, tps / bound, host_ms, expert_rows.c_str());
    std::fflush(stdout);
    {  // the same steps launch by launch (no CUDA graphs): the baseline of the graphs' gain
      double unused = 0, direct_host_ms = 0;
      const double direct_ms =
          decode(handles, &unused, &direct_host_ms, /*device_moe=*/true, /*graphs=*/false);
      std::printf(
          "{\"kind\": \"decode_no_graphs\", \"batch\": %lld, \"ms_per_step\": %.3f, "
          "\"tokens_per_s\": %.0f, \"host_ms_per_step\": %.3f, \"graphs_speedup\": "
          "%.2f}\n",
          static_cast<long long>(batch), direct_ms, batch * 1e3 / direct_ms, direct_host_ms,
          direct_ms / ms);
      std::fflush(stdout);
    }
    if (compare_host_moe) {  // the same step with the MoE plan built on the host
      double unused = 0, unused_host = 0;
      const double host_ms = decode(handles, &unused, &unused_host, /*device_moe=*/false);
      std::printf("{\"kind\": \"decode_host_moe\", \"batch\": %lld, \"ms_per_step\": %.3f, "
                  "\"tokens_per_s\": %.0f}\n",
                  static_cast<long long>(batch), host_ms, batch * 1e3 / host_ms);
      std::fflush(stdout);
    }
    for (int64_t h : handles) Check((*decoder)->RemoveSequence(h), "remove");
    Check((*decoder)->RemoveSequence(*prompt), "remove");
  }
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
