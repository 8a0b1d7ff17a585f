// gpu test of CudaBackward::Forward and UpdateWeights (model/backward_cuda.h, issue 9): the fp32
// `reference` forward on the GPU against the CPU Forward (model/forward.h) on the committed
// fixtures (mixed_small: sliding/CSA/HCA, hash + top-k MoE, B = 2, T = 40; ratios_4_128: ratios
// 4 and 128, T = 300).
//  - logits, hidden, streams and every saved activation (BlockActivations, MhcActivations,
//    AttentionActivations with the compressor and indexer ones, MoeActivations but expert_out,
//    which only the CPU saves, HcHeadActivations):
//    relative error by norm <= 1e-5 per tensor (fp32 on both sides; only summation order, cuBLAS's
//    f32 GEMM blocking and the device's expf/log1pf differ); the worst is printed. The CPU's
//    routing is replayed on the GPU so that the MoE's discrete choices match (a top-k between two
//    experts whose biased scores tie to fp32 rounding could otherwise flip); routed ids, topk_idx
//    and the dispatch plan are then compared exactly.
//  - the indexer's picks are replayed too (ForwardOptions::index_replay) for the activation
//    comparison, so that a near-tie of two scores cannot move the rest; the GPU's own selection is
//    checked separately without replay (at most 1% of a layer's picks may differ, as the routing;
//    the counts are printed).
//  - UpdateWeights: parameters changed on the host reach the device only after the refresh.
// The GPU forward + GPU backward gradients against the CPU are in cuda_backward_test.cc
// (CudaNextTokenLossAndGradients now runs this forward). Skips without a CUDA device.
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "model/backward_cuda.h"
#include "model/forward.h"
#include "tests/model/fixtures.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;
using testing::FixtureDir;
using testing::Reference;

constexpr double kForwardGpuVsCpu = 1e-5;

using Named = std::vector<std::pair<std::string, Tensor>>;

void AddMhc(const std::string& p, const MhcActivations& a, Named* out) {
  out->emplace_back(p + "normed", a.normed);
  out->emplace_back(p + "mixes", a.mixes);
  out->emplace_back(p + "pre", a.pre);
  out->emplace_back(p + "post", a.post);
  out->emplace_back(p + "comb", a.comb);
  out->emplace_back(p + "collapsed", a.collapsed);
}

void AddCompressor(const std::string& p, const CompressorActivations& a, Named* out) {
  out->emplace_back(p + "kv", a.kv);
  out->emplace_back(p + "score", a.score);
  out->emplace_back(p + "pooled", a.pooled);
  out->emplace_back(p + "entries", a.entries);
}

void AddAttention(const std::string& p, const AttentionActivations& a, Named* out) {
  out->emplace_back(p + "qr_raw", a.qr_raw);
  out->emplace_back(p + "qr", a.qr);
  out->emplace_back(p + "q", a.q);
  out->emplace_back(p + "kv_raw", a.kv_raw);
  out->emplace_back(p + "kv", a.kv);
  AddCompressor(p + "compressor.", a.compressor, out);
  AddCompressor(p + "indexer.keys.", a.indexer.keys, out);
  out->emplace_back(p + "indexer.q", a.indexer.q);
  out->emplace_back(p + "indexer.weights", a.indexer.weights);
  out->emplace_back(p + "indexer.topk", a.indexer.topk);
  out->emplace_back(p + "attn", a.attn);
  out->emplace_back(p + "lse", a.lse);
  out->emplace_back(p + "o", a.o);
  out->emplace_back(p + "u", a.u);
}

void AddMoe(const std::string& p, const MoeActivations& m, Named* out) {
  out->emplace_back(p + "logits", m.logits);
  out->emplace_back(p + "scores", m.scores);
  out->emplace_back(p + "topk_idx", m.topk_idx);
  out->emplace_back(p + "topk_weight", m.topk_weight);
  out->emplace_back(p + "expert_x", m.expert_x);
  out->emplace_back(p + "expert_gate", m.expert_gate);
  out->emplace_back(p + "expert_up", m.expert_up);
  out->emplace_back(p + "expert_act", m.expert_act);
  // expert_out is saved by the CPU only (the GPU combines a temporary; the backward never reads
  // it); the GPU's q_raw (AttentionActivations) is checked through the gradients instead.
  out->emplace_back(p + "shared_gate", m.shared_gate);
  out->emplace_back(p + "shared_up", m.shared_up);
  out->emplace_back(p + "shared_act", m.shared_act);
  out->emplace_back(p + "shared_out", m.shared_out);
}

// Every tensor of a forward's output, named, in a fixed order (CPU and GPU walk the same fields).
Named Collect(const ForwardOutput& f) {
  Named out;
  out.emplace_back("logits", f.logits);
  out.emplace_back("hidden", f.hidden);
  out.emplace_back("streams", f.streams);
  for (size_t l = 0; l < f.blocks.size(); ++l) {
    const BlockActivations& b = f.blocks[l];
    const std::string p = "layers." + std::to_string(l) + ".";
    out.emplace_back(p + "routed_experts", f.routed_experts[l]);
    out.emplace_back(p + "streams_in", b.streams_in);
    AddMhc(p + "attn_hc.", b.attn_hc, &out);
    out.emplace_back(p + "attn_in", b.attn_in);
    AddAttention(p + "attn.", b.attn, &out);
    out.emplace_back(p + "attn_out", b.attn_out);
    out.emplace_back(p + "streams_mid", b.streams_mid);
    AddMhc(p + "ffn_hc.", b.ffn_hc, &out);
    out.emplace_back(p + "ffn_in", b.ffn_in);
    AddMoe(p + "moe.", b.moe, &out);
    out.emplace_back(p + "ffn_out", b.ffn_out);
  }
  out.emplace_back("hc_head.normed", f.hc_head.normed);
  out.emplace_back("hc_head.mixes", f.hc_head.mixes);
  out.emplace_back("hc_head.pre", f.hc_head.pre);
  out.emplace_back("hc_head.collapsed", f.hc_head.collapsed);
  return out;
}

// A CPU copy of a tensor (device tensors downloaded; host ones as they are).
Tensor Host(const Tensor& t) {
  if (!t.defined() || t.view().device == core::Device::kCpu) return t;
  Tensor host = Tensor::Empty(t.dtype(), t.view().shape_vector());
  EXPECT_TRUE(kernels::cuda::Copy(t.view(), host.view()).ok());
  return host;
}

// Integer tensors equal element for element; returns the number of differing entries.
int64_t CountMismatches(const Tensor& got, const Tensor& want) {
  int64_t count = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    count += got.data<int32_t>()[i] != want.data<int32_t>()[i] ? 1 : 0;
  }
  return count;
}

// Every tensor of `gpu` against `cpu`: f32 by relative error by norm, i32 exactly; prints the
// worst f32 tensor.
void ExpectForwardClose(const ForwardOutput& gpu, const ForwardOutput& cpu, double tolerance,
                        const std::string& label) {
  ASSERT_EQ(gpu.blocks.size(), cpu.blocks.size());
  const Named got = Collect(gpu), want = Collect(cpu);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  std::string worst_name;
  int compared = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const std::string& name = want[i].first;
    ASSERT_EQ(got[i].second.defined(), want[i].second.defined()) << label << ": " << name;
    if (!want[i].second.defined()) continue;
    const Tensor g = Host(got[i].second), w = Host(want[i].second);
    ASSERT_EQ(g.view().shape_vector(), w.view().shape_vector()) << label << ": " << name;
    ASSERT_EQ(g.dtype(), w.dtype()) << label << ": " << name;
    if (w.numel() == 0) continue;
    ++compared;
    if (w.dtype() == DType::kI32) {
      const int64_t mismatches = CountMismatches(g, w);
      if (mismatches > 0)
        std::printf("[cuda forward] %s: %s differs in %lld of %lld entries\n", label.c_str(),
                    name.c_str(), static_cast<long long>(mismatches),
                    static_cast<long long>(w.numel()));
      EXPECT_EQ(mismatches, 0) << label << ": " << name;
      continue;
    }
    const v4rl::testing::CompareStats stats = v4rl::testing::Compare(g.view(), w.view());
    if (stats.rel_error_by_norm > worst) {
      worst = stats.rel_error_by_norm;
      worst_name = name;
    }
    EXPECT_TRUE(v4rl::testing::RelErrorByNormAtMost(g.view(), w.view(), tolerance))
        << label << ": " << name << " " << v4rl::testing::Describe(stats);
  }
  // The dispatch plans, the GPU's built on the device (plan order is what the backward walks):
  // the CPU's offsets and slots, then -1 past its picks.
  for (size_t l = 0; l < cpu.blocks.size(); ++l) {
    const kernels::plan::MoeDispatchPlan& plan = cpu.blocks[l].moe.plan;
    const Tensor offsets = Host(gpu.blocks[l].moe.device_offsets);
    const Tensor slots = Host(gpu.blocks[l].moe.device_slots);
    ASSERT_EQ(offsets.numel(), static_cast<int64_t>(plan.expert_offsets.size())) << l;
    ASSERT_EQ(slots.numel(), plan.num_tokens * plan.num_topk) << l;
    for (int64_t e = 0; e < offsets.numel(); ++e) {
      EXPECT_EQ(offsets.data<int32_t>()[e], plan.expert_offsets[e]) << l << " expert " << e;
    }
    for (int64_t p = 0; p < slots.numel(); ++p) {
      const int64_t want = p < static_cast<int64_t>(plan.slots.size()) ? plan.slots[p] : -1;
      EXPECT_EQ(slots.data<int32_t>()[p], want) << l << " plan position " << p;
    }
  }
  std::printf(
      "[cuda forward] %s: %d tensors, worst relative error by norm %.3e (%s), tolerance "
      "%.0e\n",
      label.c_str(), compared, worst, worst_name.c_str(), tolerance);
}

ForwardOptions SaveAll() {
  ForwardOptions options;
  options.return_routing = options.return_hidden = options.return_streams = true;
  options.save_activations = true;
  return options;
}

// The GPU forward with the CPU forward's routing and indexer picks replayed.
ForwardOptions ReplayOf(const ForwardOutput& cpu) {
  ForwardOptions options = SaveAll();
  for (const Tensor& ids : cpu.routed_experts) options.routing_replay.push_back(ids.view());
  for (const BlockActivations& block : cpu.blocks) {
    const Tensor& picks = block.attn.indexer.topk;
    options.index_replay.push_back(picks.defined() ? picks.view() : core::TensorView());
  }
  return options;
}

class CudaReferenceForwardTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaReferenceForwardTest, EveryActivationMatchesTheCpu) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model, Model::Load(FixtureDir(GetParam()) + "/model"));
  Reference reference(GetParam());
  const Tensor ids = reference.Get("input_ids");
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput cpu, Forward(model, ids.view(), SaveAll()));
  V4RL_ASSERT_OK_AND_ASSIGN(auto trainer, CudaBackward::Create(model));
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput gpu, trainer->Forward(ids.view(), ReplayOf(cpu)));
  EXPECT_EQ(gpu.logits.view().device, core::Device::kCuda);
  ExpectForwardClose(gpu, cpu, kForwardGpuVsCpu, GetParam());

  // Without replay the GPU selects by itself: the same experts but for near-ties of the biased
  // scores (fp32 rounding), so at most 1% of the picks of a layer may differ; the count is
  // printed.
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput own, trainer->Forward(ids.view(), SaveAll()));
  for (size_t l = 0; l < cpu.routed_experts.size(); ++l) {
    const int64_t mismatches = CountMismatches(own.routed_experts[l], cpu.routed_experts[l]);
    std::printf("[cuda forward] %s layer %zu, own routing: %lld of %lld picks differ\n",
                GetParam().c_str(), l, static_cast<long long>(mismatches),
                static_cast<long long>(cpu.routed_experts[l].numel()));
    EXPECT_LE(mismatches * 100, cpu.routed_experts[l].numel()) << "layer " << l;
  }
  // The same for the indexer's own selection (IndexerSelectsAsTheCpu).
  for (size_t l = 0; l < cpu.blocks.size(); ++l) {
    const Tensor& want = cpu.blocks[l].attn.indexer.topk;
    if (!want.defined()) continue;
    const int64_t mismatches = CountMismatches(Host(own.blocks[l].attn.indexer.topk), want);
    std::printf("[cuda forward] %s layer %zu, own indexer picks: %lld of %lld differ\n",
                GetParam().c_str(), l, static_cast<long long>(mismatches),
                static_cast<long long>(want.numel()));
    EXPECT_LE(mismatches * 100, want.numel()) << "layer " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaReferenceForwardTest,
                         ::testing::Values("mixed_small", "ratios_4_128"));

TEST(CudaReferenceForwardOptionsTest, PlainForwardAndBadInputs) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model, Model::Load(FixtureDir("mixed_small") + "/model"));
  Reference reference("mixed_small");
  const Tensor ids = reference.Get("input_ids");
  V4RL_ASSERT_OK_AND_ASSIGN(auto trainer, CudaBackward::Create(model));
  // No options: logits only, as the CPU.
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput plain, trainer->Forward(ids.view()));
  EXPECT_TRUE(plain.blocks.empty());
  EXPECT_FALSE(plain.hidden.defined());
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput cpu, Forward(model, ids.view()));
  EXPECT_TRUE(v4rl::testing::RelErrorByNormAtMost(Host(plain.logits).view(), cpu.logits.view(),
                                                  kForwardGpuVsCpu));
  // Out-of-vocabulary id and a replay with the wrong layer count are InvalidArgument.
  Tensor bad = Tensor::CopyOf(ids.view());
  if (bad.dtype() == DType::kI64) {
    bad.data<int64_t>()[3] = model.config.vocab_size;
  } else {
    bad.data<int32_t>()[3] = static_cast<int32_t>(model.config.vocab_size);
  }
  EXPECT_EQ(trainer->Forward(bad.view()).status().code(), absl::StatusCode::kInvalidArgument);
  ForwardOptions one_layer;
  one_layer.routing_replay.push_back(cpu.logits.view());
  EXPECT_EQ(trainer->Forward(ids.view(), one_layer).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaReferenceForwardUpdateTest, HostChangesArriveAfterUpdateWeights) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  V4RL_ASSERT_OK_AND_ASSIGN(Model model, Model::Load(FixtureDir("mixed_small") + "/model"));
  Reference reference("mixed_small");
  const Tensor ids = reference.Get("input_ids");
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput before, Forward(model, ids.view(), SaveAll()));
  V4RL_ASSERT_OK_AND_ASSIGN(auto trainer, CudaBackward::Create(model));

  // An optimizer step on the host: the final norm and a first-layer projection change.
  ASSERT_EQ(model.weights.norm.dtype(), DType::kF32);
  ASSERT_EQ(model.weights.layers[0].attn.wo_b.dtype(), DType::kF32);
  for (int64_t i = 0; i < model.weights.norm.numel(); ++i)
    model.weights.norm.data<float>()[i] *= 1.5f;
  float* wo_b = model.weights.layers[0].attn.wo_b.data<float>();
  for (int64_t i = 0; i < model.weights.layers[0].attn.wo_b.numel(); ++i) wo_b[i] *= 0.5f;
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput after, Forward(model, ids.view(), SaveAll()));
  ASSERT_FALSE(
      v4rl::testing::RelErrorByNormAtMost(after.logits.view(), before.logits.view(), 1e-2));

  // Not refreshed yet: the device still holds the old parameters.
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput stale,
                            trainer->Forward(ids.view(), ReplayOf(before)));
  EXPECT_TRUE(v4rl::testing::RelErrorByNormAtMost(Host(stale.logits).view(), before.logits.view(),
                                                  kForwardGpuVsCpu));
  // Refreshed: every activation follows the new parameters.
  V4RL_ASSERT_OK(trainer->UpdateWeights());
  V4RL_ASSERT_OK_AND_ASSIGN(const ForwardOutput fresh,
                            trainer->Forward(ids.view(), ReplayOf(after)));
  ExpectForwardClose(fresh, after, kForwardGpuVsCpu, "after UpdateWeights");
}

}  // namespace
}  // namespace v4rl::model
