// GPU decode (model/decode_cuda.h) on the committed fixtures (gpu label; skips without a device):
// prompts fed in ragged steps of odd chunk sizes (sequences skipping steps so they sit at
// different positions), every position's logits compared with
//  - CudaModel::Forward over the whole prompt, both with the CPU's routing and indexer picks
//    replayed (bf16 rounding and cuBLASLt's row-count dependence only: tight bounds);
//  - the CPU's DecodeStep with the same schedule (free-running: near-tied router/indexer scores
//    flip in these tiny random models; loose bounds as model_cuda_forward_test's kFree);
// and greedy decoding on mixed_small with the CPU's tokens fed to both (teacher forcing): the
// GPU's argmax must equal the CPU's except where the CPU's margin between the two tokens is below
// twice that row's max |GPU - CPU| logit error (both logits may move by it: a near-tie; counted
// and printed). Measured on the H200 (mixed_small / ratios_4_128), selections replayed: with every
// input through the prefill kernels decode equals the GPU forward bit for bit; with single-token
// inputs through the batched decode kernels (fp32 probabilities) cosine distance 1.0e-5 / 2.5e-5,
// max |err| 1.5% / 1.6% of max |ref|, by norm 0.45% / 0.70%; vs the CPU forward cosine distance
// 8.3e-5 / 7.6e-5, max |err| 4.0% / 2.8%, by norm 1.3% / 1.2% (as CudaModel::Forward).
// Free-running vs the CPU DecodeStep: cosine distance 8.5e-3 / 1.8e-3 (selection flips). Greedy:
// 77 of 80 argmax equal, the 3 others near-ties (CPU margins 0.59, 1.94, 0.018 against row
// errors 2.5, 2.8, 0.029: rows already moved by an earlier flip).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "model/decode.h"
#include "model/decode_cuda.h"
#include "model/forward.h"
#include "model/forward_cuda.h"
#include "tests/model/fixtures.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

struct Bound {
  double cosine_distance, max_rel_to_max, rel_by_norm;
};

double MaxAbs(const Tensor& t) {
  double m = 0;
  for (float v : t.ToFloatVector()) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

void Report(const std::string& tag, const Tensor& actual, const Tensor& expected,
            const Bound& bound) {
  ASSERT_TRUE(actual.view().SameShape(expected.view().shape_vector()));
  const v4rl::testing::CompareStats s = v4rl::testing::Compare(actual.view(), expected.view());
  const double rel = s.max_abs_error / MaxAbs(expected);
  std::printf("[measured] %s: cosine distance %.3e, max abs err %.3e (%.3e of max |ref|), rel "
              "err by norm %.3e\n",
              tag.c_str(), s.cosine_distance, s.max_abs_error, rel, s.rel_error_by_norm);
  EXPECT_LE(s.cosine_distance, bound.cosine_distance) << tag;
  EXPECT_LE(rel, bound.max_rel_to_max) << tag;
  EXPECT_LE(s.rel_error_by_norm, bound.rel_by_norm) << tag;
}

Tensor ToI32(const Tensor& ids) {
  Tensor out = Tensor::Empty(DType::kI32, ids.view().shape_vector());
  const core::Tensor f = core::ToFloat32(ids.view());
  for (int64_t i = 0; i < out.numel(); ++i) out.data<int32_t>()[i] = static_cast<int32_t>(f.data<float>()[i]);
  return out;
}

// One step of a schedule: (sequence, first position, count) per input.
struct Piece {
  int64_t b, position, count;
};
using Schedule = std::vector<std::vector<Piece>>;

// Random odd chunk sizes (1, 3, 5, 7, 13, 17); each step a sequence joins with probability 0.7.
Schedule MakeSchedule(int64_t batch, int64_t length, uint64_t seed) {
  static constexpr int64_t kChunks[] = {1, 3, 5, 7, 13, 17};
  const core::Rng rng(seed);
  uint64_t counter = 0;
  auto next = [&] { return rng.Bits(counter++)[0]; };
  std::vector<int64_t> done(batch, 0);
  Schedule schedule;
  while (*std::min_element(done.begin(), done.end()) < length) {
    std::vector<Piece> step;
    for (int64_t b = 0; b < batch; ++b) {
      if (done[b] == length || (next() % 10 >= 7 && schedule.size() % 3 != 2)) continue;
      const int64_t count = std::min(kChunks[next() % 6], length - done[b]);
      step.push_back({b, done[b], count});
      done[b] += count;
    }
    if (!step.empty()) schedule.push_back(step);
  }
  return schedule;
}

// Rows [b, p .. p + count) of every piece of `step` from per-layer [B, T, k] tables, as [N, k].
Tensor StepRows(const Tensor& table, const std::vector<Piece>& step, int64_t n) {
  const int64_t t = table.size(1), k = table.size(2);
  Tensor rows = Tensor::Empty(DType::kI32, {n, k});
  int64_t row = 0;
  for (const Piece& piece : step) {
    for (int64_t i = 0; i < piece.count; ++i, ++row) {
      std::copy_n(table.data<int32_t>() + ((piece.b * t) + piece.position + i) * k, k,
                  rows.data<int32_t>() + row * k);
    }
  }
  return rows;
}

// A step's logits [N, V] (rows in step order) into their [B, T, V] places.
void ScatterStepLogits(const std::vector<Piece>& step, const Tensor& rows, Tensor* logits) {
  const int64_t length = logits->size(1), vocab = logits->size(2);
  int64_t row = 0;
  for (const Piece& piece : step) {
    for (int64_t i = 0; i < piece.count; ++i, ++row) {
      std::copy_n(rows.data<float>() + row * vocab, vocab,
                  logits->data<float>() + ((piece.b * length) + piece.position + i) * vocab);
    }
  }
}

// The CPU forward's discrete choices, to replay on the GPU: per layer routed ids [B, T, k] and
// indexer picks [B, T, k'] (undefined for non-CSA layers).
struct CpuSelections {
  ForwardOutput forward;  // the CPU forward (logits, activations)
  std::vector<Tensor> routing, picks;
  void ReplayIn(CudaForwardOptions* options) const {
    for (size_t l = 0; l < routing.size(); ++l) {
      options->routing_replay.push_back(routing[l].view());
      options->index_replay.push_back(picks[l].defined() ? picks[l].view() : core::TensorView());
    }
  }
};

absl::StatusOr<CpuSelections> SelectOnCpu(const Model& model, const Tensor& ids) {
  ForwardOptions options;
  options.return_routing = true;
  options.save_activations = true;
  CpuSelections out;
  V4RL_ASSIGN_OR_RETURN(out.forward, Forward(model, ids.view(), options));
  for (size_t l = 0; l < out.forward.blocks.size(); ++l) {
    out.routing.push_back(out.forward.routed_experts[l]);
    out.picks.push_back(out.forward.blocks[l].attn.indexer.topk);
  }
  return out;
}

// Runs `schedule` through a CudaDecoder; returns logits [B, T, V].
Tensor RunGpu(CudaModel& gpu, const ModelConfig& config, const Tensor& ids,
              const Schedule& schedule, const std::vector<Tensor>* routing,
              const std::vector<Tensor>* picks, bool batched = true, bool device_moe = true,
              bool fp8_simulation = false) {
  const int64_t batch = ids.size(0), length = ids.size(1), vocab = config.vocab_size;
  auto decoder = CudaDecoder::Create(&gpu, int64_t{64} << 20, 64 << 10);
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  std::vector<int64_t> handles;
  for (int64_t b = 0; b < batch; ++b) {
    auto handle = (*decoder)->AddSequence(length);
    EXPECT_TRUE(handle.ok()) << handle.status();
    handles.push_back(*handle);
  }
  Tensor logits = Tensor::Zeros(DType::kF32, {batch, length, vocab});
  for (const std::vector<Piece>& step : schedule) {
    std::vector<CudaDecodeInput> inputs;
    int64_t n = 0;
    for (const Piece& piece : step) {
      inputs.push_back({handles[piece.b],
                        absl::MakeConstSpan(ids.data<int32_t>() + piece.b * length + piece.position,
                                            piece.count)});
      n += piece.count;
    }
    CudaDecodeStepOptions options;
    options.all_logits = true;
    options.indexer_q_chunk = 5;
    options.batched_decode = batched;
    options.device_moe_dispatch = device_moe;
    options.fp8_simulation = fp8_simulation;
    std::vector<Tensor> keep;
    if (routing != nullptr) {
      for (size_t l = 0; l < routing->size(); ++l) {
        keep.push_back(StepRows((*routing)[l], step, n));
        options.routing_replay.push_back(keep.back().view());
        if ((*picks)[l].defined()) {
          keep.push_back(StepRows((*picks)[l], step, n));
          options.index_replay.push_back(keep.back().view());
        } else {
          options.index_replay.push_back(core::TensorView());
        }
      }
    }
    auto out = (*decoder)->Step(inputs, options);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return logits;
    ScatterStepLogits(step, out->logits, &logits);
  }
  return logits;
}

// The CPU DecodeStep over the same schedule; logits [B, T, V].
Tensor RunCpu(const Model& model, const Tensor& ids, const Schedule& schedule) {
  const int64_t batch = ids.size(0), length = ids.size(1), vocab = model.config.vocab_size;
  std::vector<DecodeState> states;
  for (int64_t b = 0; b < batch; ++b) states.push_back(*CreateDecodeState(model.config, length));
  Tensor logits = Tensor::Zeros(DType::kF32, {batch, length, vocab});
  for (const std::vector<Piece>& step : schedule) {
    std::vector<DecodeInput> inputs;
    for (const Piece& piece : step) {
      inputs.push_back({&states[piece.b],
                        absl::MakeConstSpan(ids.data<int32_t>() + piece.b * length + piece.position,
                                            piece.count)});
    }
    DecodeStepOptions options;
    options.all_logits = true;
    auto out = DecodeStep(model, inputs, options);
    EXPECT_TRUE(out.ok()) << out.status();
    ScatterStepLogits(step, out->logits, &logits);
  }
  return logits;
}

void CheckFixture(const std::string& fixture, uint64_t seed) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model, Model::Load(testing::FixtureDir(fixture) + "/model"));
  testing::Reference ref(fixture);
  ASSERT_TRUE(ref.ok());
  const Tensor ids = ToI32(ref.Get("input_ids"));
  const int64_t batch = ids.size(0), length = ids.size(1);
  const Schedule schedule = MakeSchedule(batch, length, seed);
  std::printf("[schedule] %s [%ldx%ld]: %zu steps\n", fixture.c_str(), long(batch), long(length),
              schedule.size());

  // CPU selections (routing, indexer picks) to replay on both GPU paths.
  V4RL_ASSERT_OK_AND_ASSIGN(const CpuSelections selections, SelectOnCpu(model, ids));
  const ForwardOutput& cpu = selections.forward;
  const std::vector<Tensor>& routing = selections.routing;
  const std::vector<Tensor>& picks = selections.picks;
  V4RL_ASSERT_OK_AND_ASSIGN(auto gpu, CudaModel::Create(model));
  CudaForwardOptions forward_options;
  selections.ReplayIn(&forward_options);
  V4RL_ASSERT_OK_AND_ASSIGN(const CudaForwardOutput full_replayed,
                            gpu->Forward(ids.view(), forward_options));
  V4RL_ASSERT_OK_AND_ASSIGN(const CudaForwardOutput full_free, gpu->Forward(ids.view()));

  // Every input through the prefill kernels: Forward's arithmetic exactly.
  const Tensor per_sequence =
      RunGpu(*gpu, model.config, ids, schedule, &routing, &picks, /*batched=*/false,
             /*device_moe=*/false);
  Report(fixture + " decode (prefill kernels) vs GPU forward, selections replayed", per_sequence,
         full_replayed.logits, {2e-5, 2e-2, 1e-2});
  // Single-token inputs through the batched decode kernels (fp32 attention probabilities).
  const Tensor replayed = RunGpu(*gpu, model.config, ids, schedule, &routing, &picks);
  Report(fixture + " decode vs GPU forward, selections replayed", replayed, full_replayed.logits,
         {1e-4, 5e-2, 2e-2});
  Report(fixture + " decode vs CPU forward, selections replayed", replayed, cpu.logits,
         {2e-4, 1e-1, 3e-2});
  // The MoE plan built on the device with the device-offset expert GEMMs (the default) against
  // the host plan with cuBLASLt per expert: the same picks, bf16 roundings of other GEMMs.
  const Tensor host_moe = RunGpu(*gpu, model.config, ids, schedule, &routing, &picks,
                                 /*batched=*/true, /*device_moe=*/false);
  Report(fixture + " decode, device vs host MoE dispatch, selections replayed", replayed, host_moe,
         {2e-5, 2e-2, 1e-2});
  const Tensor free = RunGpu(*gpu, model.config, ids, schedule, nullptr, nullptr);
  const Tensor cpu_decode = RunCpu(model, ids, schedule);
  Report(fixture + " decode vs GPU forward, free-running", free, full_free.logits,
         {3e-2, 1.0, 0.35});
  Report(fixture + " decode vs CPU DecodeStep, free-running", free, cpu_decode,
         {3e-2, 1.0, 0.35});
}

TEST(CudaDecodeTest, MixedSmallRaggedChunks) { CheckFixture("mixed_small", 11); }

// The official FP8/FP4 simulation: the decoder (ragged steps, states holding simulated rows)
// against CudaModel::Forward with the same option and the CPU's selections replayed, as the
// plain comparisons above; and the simulation against the plain forward (it must change the
// logits, and only by quantisation noise).
TEST(CudaDecodeTest, Fp8SimulationDecodeMatchesForward) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (const std::string fixture : {"mixed_small", "ratios_4_128"}) {
    V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                              Model::Load(testing::FixtureDir(fixture) + "/model"));
    testing::Reference ref(fixture);
    ASSERT_TRUE(ref.ok());
    const Tensor ids = ToI32(ref.Get("input_ids"));
    const Schedule schedule = MakeSchedule(ids.size(0), ids.size(1), 21);
    V4RL_ASSERT_OK_AND_ASSIGN(const CpuSelections selections, SelectOnCpu(model, ids));
    const std::vector<Tensor>& routing = selections.routing;
    const std::vector<Tensor>& picks = selections.picks;
    CudaForwardOptions options;
    selections.ReplayIn(&options);
    V4RL_ASSERT_OK_AND_ASSIGN(auto gpu, CudaModel::Create(model));
    V4RL_ASSERT_OK_AND_ASSIGN(const CudaForwardOutput plain, gpu->Forward(ids.view(), options));
    options.fp8_simulation = true;
    V4RL_ASSERT_OK_AND_ASSIGN(const CudaForwardOutput simulated, gpu->Forward(ids.view(), options));
    const Tensor per_sequence = RunGpu(*gpu, model.config, ids, schedule, &routing, &picks,
                                       /*batched=*/false, /*device_moe=*/false,
                                       /*fp8_simulation=*/true);
    Report(fixture + " fp8 simulation: decode (prefill kernels) vs forward", per_sequence,
           simulated.logits, {2e-5, 2e-2, 1e-2});
    // The decode kernels differ from the prefill kernels by bf16 roundings; the simulation's FP8
    // block quantisation turns some of those into whole FP8 steps (2^-3 relative), so its
    // decode-vs-forward gap is bounded relative to the plain bf16 gap of the same schedule (a
    // quantisation missing from one path would instead show the simulation's whole effect).
    const Tensor plain_batched = RunGpu(*gpu, model.config, ids, schedule, &routing, &picks,
                                        /*batched=*/true, /*device_moe=*/true,
                                        /*fp8_simulation=*/false);
    const v4rl::testing::CompareStats gap =
        v4rl::testing::Compare(plain_batched.view(), plain.logits.view());
    std::printf(
        "[measured] %s plain bf16: decode vs forward: cosine distance %.3e, rel err by "
        "norm %.3e\n",
        fixture.c_str(), gap.cosine_distance, gap.rel_error_by_norm);
    const Tensor batched = RunGpu(*gpu, model.config, ids, schedule, &routing, &picks,
                                  /*batched=*/true, /*device_moe=*/true, /*fp8_simulation=*/true);
    Report(fixture + " fp8 simulation: decode vs forward", batched, simulated.logits,
           {std::max(1e-4, 36 * gap.cosine_distance), 0.15,
            std::max(2e-2, 6 * gap.rel_error_by_norm)});
    Report(fixture + " fp8 simulation vs plain bf16 forward", simulated.logits, plain.logits,
           {2e-2, 0.5, 0.2});
    const v4rl::testing::CompareStats change =
        v4rl::testing::Compare(simulated.logits.view(), plain.logits.view());
    EXPECT_GT(change.max_abs_error, 0.0) << fixture << ": the simulation changed nothing";
  }
}
TEST(CudaDecodeTest, Ratios4And128RaggedChunks) { CheckFixture("ratios_4_128", 12); }

// Greedy decoding, CPU tokens fed to both; mismatches only at near-ties.
TEST(CudaDecodeTest, GreedyTokensMatchCpuOnMixedSmall) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                            Model::Load(testing::FixtureDir("mixed_small") + "/model"));
  testing::Reference ref("mixed_small");
  const Tensor ids = ToI32(ref.Get("input_ids"));
  const int64_t batch = ids.size(0), prompt = 13, steps = 40, vocab = model.config.vocab_size;
  V4RL_ASSERT_OK_AND_ASSIGN(auto gpu, CudaModel::Create(model));
  V4RL_ASSERT_OK_AND_ASSIGN(auto decoder, CudaDecoder::Create(gpu.get(), 16 << 20, 32 << 10));
  std::vector<DecodeState> states;
  std::vector<int64_t> handles;
  std::vector<std::vector<int32_t>> feed(batch);
  for (int64_t b = 0; b < batch; ++b) {
    states.push_back(*CreateDecodeState(model.config, prompt + steps));
    V4RL_ASSERT_OK_AND_ASSIGN(int64_t h, decoder->AddSequence(prompt + steps));
    handles.push_back(h);
    feed[b].assign(ids.data<int32_t>() + b * ids.size(1), ids.data<int32_t>() + b * ids.size(1) + prompt);
  }
  int64_t agree = 0, near_ties = 0, total = 0;
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<DecodeInput> cpu_in;
    std::vector<CudaDecodeInput> gpu_in;
    for (int64_t b = 0; b < batch; ++b) {
      cpu_in.push_back({&states[b], feed[b]});
      gpu_in.push_back({handles[b], feed[b]});
    }
    V4RL_ASSERT_OK_AND_ASSIGN(const DecodeStepOutput c, DecodeStep(model, cpu_in));
    V4RL_ASSERT_OK_AND_ASSIGN(const CudaDecodeStepOutput g, decoder->Step(gpu_in));
    for (int64_t b = 0; b < batch; ++b) {
      const float* cr = c.logits.data<float>() + b * vocab;
      const float* gr = g.logits.data<float>() + b * vocab;
      const int64_t ct = std::max_element(cr, cr + vocab) - cr;
      const int64_t gt = std::max_element(gr, gr + vocab) - gr;
      double err = 0;
      for (int64_t v = 0; v < vocab; ++v) err = std::max(err, std::fabs(double(cr[v]) - gr[v]));
      ++total;
      if (ct == gt) {
        ++agree;
      } else {
        const double margin = double(cr[ct]) - cr[gt];
        std::printf("[near-tie] step %ld seq %ld: cpu %ld gpu %ld, cpu margin %.4f, row err %.4f\n",
                    long(s), long(b), long(ct), long(gt), margin, err);
        EXPECT_LE(margin, 2 * err) << "step " << s << " seq " << b;  // both logits move
        ++near_ties;
      }
      feed[b].assign(1, static_cast<int32_t>(ct));
    }
  }
  std::printf("[measured] greedy mixed_small: %ld of %ld argmax equal, %ld near-ties\n",
              long(agree), long(total), long(near_ties));
}

// Single-token steps through recorded CUDA graphs (CudaDecodeStepOptions::cuda_graphs) against
// the same steps launch by launch, on two decoders fed the same schedule: sequences at scattered
// positions (windows of 4 and 128 completing at different steps, one crossing the 1,024-position
// bound, which records a second graph), a sequence replaced midway (same row count: the same
// graph with a new state table) and one removed (fewer rows: a new graph). The graph path runs
// the same kernels with positions read on the device; its only free choices (the indexer's score
// width, the attention's key-split bound) leave these small models' results unchanged, so the
// logits must agree to rounding (printed: how many steps are bit for bit equal).
TEST(CudaDecodeTest, GraphStepsMatchStepsLaunchByLaunch) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                            Model::Load(testing::FixtureDir("ratios_4_128") + "/model"));
  const int64_t vocab = model.config.vocab_size, capacity = 1100;
  V4RL_ASSERT_OK_AND_ASSIGN(auto gpu, CudaModel::Create(model));
  const int64_t bytes = CudaDecoder::SequenceBytes(model.config, capacity);
  V4RL_ASSERT_OK_AND_ASSIGN(auto graphs, CudaDecoder::Create(gpu.get(), 8 * bytes, 64 << 10));
  V4RL_ASSERT_OK_AND_ASSIGN(auto direct, CudaDecoder::Create(gpu.get(), 8 * bytes, 64 << 10));
  auto token = [vocab](int64_t step, int64_t row) {
    return static_cast<int32_t>((37 * step + 11 * row + 3) % vocab);
  };
  // Prompts (one multi-token step, identical on both) for sequences of the given lengths.
  std::vector<int64_t> graph_handles, direct_handles;
  auto add = [&](const std::vector<int64_t>& lengths) {
    std::vector<std::vector<int32_t>> prompts;
    std::vector<CudaDecodeInput> graph_in, direct_in;
    for (int64_t length : lengths) {
      std::vector<int32_t> prompt(length);
      for (int64_t t = 0; t < length; ++t) prompt[t] = token(t, length);
      prompts.push_back(std::move(prompt));
    }
    for (const auto& prompt : prompts) {
      auto g = graphs->AddSequence(capacity);
      auto d = direct->AddSequence(capacity);
      ASSERT_TRUE(g.ok() && d.ok());
      graph_handles.push_back(*g);
      direct_handles.push_back(*d);
      graph_in.push_back({*g, prompt});
      direct_in.push_back({*d, prompt});
    }
    CudaDecodeStepOptions options;
    options.cuda_graphs = false;
    V4RL_ASSERT_OK_AND_ASSIGN(const CudaDecodeStepOutput a, graphs->Step(graph_in, options));
    V4RL_ASSERT_OK_AND_ASSIGN(const CudaDecodeStepOutput b, direct->Step(direct_in, options));
  };
  add({1, 3, 126, 130, 1017, 1020});
  int64_t exact = 0, total = 0;
  for (int64_t step = 0; step < 14; ++step) {
    if (step == 5) {  // replace the second sequence (same row count, new state table)
      ASSERT_TRUE(graphs->RemoveSequence(graph_handles[1]).ok());
      ASSERT_TRUE(direct->RemoveSequence(direct_handles[1]).ok());
      graph_handles.erase(graph_handles.begin() + 1);
      direct_handles.erase(direct_handles.begin() + 1);
      add({7});
    }
    if (step == 10) {  // one sequence fewer: a graph of five rows
      ASSERT_TRUE(graphs->RemoveSequence(graph_handles[0]).ok());
      ASSERT_TRUE(direct->RemoveSequence(direct_handles[0]).ok());
      graph_handles.erase(graph_handles.begin());
      direct_handles.erase(direct_handles.begin());
    }
    const int64_t rows = static_cast<int64_t>(graph_handles.size());
    std::vector<int32_t> tokens(rows);
    std::vector<CudaDecodeInput> graph_in, direct_in;
    for (int64_t r = 0; r < rows; ++r) {
      tokens[r] = token(step + 2000, r);
      graph_in.push_back({graph_handles[r], absl::MakeConstSpan(&tokens[r], 1)});
      direct_in.push_back({direct_handles[r], absl::MakeConstSpan(&tokens[r], 1)});
    }
    CudaDecodeStepOptions with, without;
    with.return_routing = without.return_routing = true;
    without.cuda_graphs = false;
    V4RL_ASSERT_OK_AND_ASSIGN(const CudaDecodeStepOutput g, graphs->Step(graph_in, with));
    V4RL_ASSERT_OK_AND_ASSIGN(const CudaDecodeStepOutput d, direct->Step(direct_in, without));
    ASSERT_EQ(g.logits.size(0), rows);
    const v4rl::testing::CompareStats s = v4rl::testing::Compare(g.logits.view(), d.logits.view());
    ++total;
    if (s.max_abs_error == 0) ++exact;
    EXPECT_LE(s.max_abs_error, 1e-3 * MaxAbs(d.logits)) << "step " << step;
    ASSERT_EQ(g.routed_experts.size(), d.routed_experts.size());
    for (size_t l = 0; l < g.routed_experts.size(); ++l) {
      EXPECT_EQ(g.routed_experts[l].ToFloatVector(), d.routed_experts[l].ToFloatVector())
          << "step " << step << " layer " << l;
    }
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(graphs->num_tokens(graph_handles[r]).value(),
                direct->num_tokens(direct_handles[r]).value());
    }
  }
  std::printf("[measured] graph vs launch-by-launch decode steps: %ld of %ld bit for bit equal\n",
              long(exact), long(total));
  // Six rows below 1,024, six rows past it, five rows past it.
  EXPECT_EQ(graphs->graphs_recorded(), 3);
  EXPECT_EQ(direct->graphs_recorded(), 0);
}

TEST(CudaDecodeTest, PoolHandsBlocksOutAndBack) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                            Model::Load(testing::FixtureDir("mixed_small") + "/model"));
  V4RL_ASSERT_OK_AND_ASSIGN(auto gpu, CudaModel::Create(model));
  const int64_t bytes = CudaDecoder::SequenceBytes(model.config, 1000);
  V4RL_ASSERT_OK_AND_ASSIGN(auto decoder, CudaDecoder::Create(gpu.get(), 3 * bytes, bytes / 4));
  std::vector<int64_t> handles;
  for (int i = 0; i < 3; ++i) {
    V4RL_ASSERT_OK_AND_ASSIGN(int64_t h, decoder->AddSequence(1000));
    handles.push_back(h);
  }
  EXPECT_EQ(decoder->AddSequence(1000).status().code(), absl::StatusCode::kResourceExhausted);
  V4RL_ASSERT_OK(decoder->RemoveSequence(handles[1]));
  V4RL_ASSERT_OK_AND_ASSIGN(int64_t again, decoder->AddSequence(1000));
  EXPECT_EQ(decoder->num_tokens(again).value(), 0);
  EXPECT_EQ(decoder->RemoveSequence(12345).code(), absl::StatusCode::kNotFound);
  const int32_t token = 3;
  EXPECT_EQ(decoder->Step({{again, absl::MakeConstSpan(&token, 1)}, {again, absl::MakeConstSpan(&token, 1)}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace v4rl::model
