// CUDA MoE: routing (sqrt-softplus scores, biased top-k with ties, hash, replay) exactly against
// the CPU rule, and the whole routed + shared expert block (gate GEMM, routing, host plan,
// gather, grouped expert GEMMs, clamped SwiGLU, weighted combine) against model::MoeForward on
// bf16-rounded weights and inputs, both with the host plan + cuBLASLt per expert and with the
// device plan + device-offset grouped GEMM; the device plan identical to the host plan; the
// device grouped GEMM against cuBLASLt per expert, its Hopper kernel against the host reference,
// the fused w1 / w3 / SwiGLU kernel against the three calls it replaces (gpu label; skips without
// a device).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/linear.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/grouped_gemm_wgmma.h"
#include "kernels/cuda/moe.h"
#include "kernels/plan/moe_dispatch.h"
#include "kernels/plan/topk.h"
#include "model/moe.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::ExpertOffsets;
using testing::MakeExpertOffsets;
using testing::RandomNormal;

TEST(CudaMoe, RoutingMatchesCpuRuleWithTies) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t n = 17, experts = 37, k = 6;
  Tensor logits = RandomNormal({n, experts}, 1, 2.0f);
  for (int64_t e = 0; e < experts; e += 5) logits.data<float>()[3 * experts + e] = 0.5f;  // ties
  logits.data<float>()[4 * experts + 2] = 25.0f;  // above the softplus threshold
  Tensor bias = RandomNormal({experts}, 2, 0.1f);
  for (int64_t e = 0; e < experts; e += 5) bias.data<float>()[e] = 0.0f;
  const float route_scale = 1.5f;
  // CPU rule (model/moe.cc RouteTokens), with the same f32 score arithmetic.
  std::vector<int32_t> want_idx(n * k);
  std::vector<float> want_weight(n * k), scores(n * experts);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> biased(experts), picked(k);
    for (int64_t e = 0; e < experts; ++e) {
      const float v = logits.data<float>()[t * experts + e];
      scores[t * experts + e] = std::sqrt(v > 20.0f ? v : std::log1p(std::exp(v)));
      biased[e] = scores[t * experts + e] + bias.data<float>()[e];
    }
    plan::TopK(biased.data(), experts, k, want_idx.data() + t * k, picked.data());
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += scores[t * experts + want_idx[t * k + j]];
    for (int64_t j = 0; j < k; ++j) {
      want_weight[t * k + j] = scores[t * experts + want_idx[t * k + j]] / (sum + 1e-20f) * route_scale;
    }
  }
  const Tensor d_logits = testing::ToDevice(logits, DType::kF32);
  const Tensor d_bias = testing::ToDevice(bias, DType::kF32);
  const Tensor d_idx = Tensor::Empty(DType::kI32, {n, k}, DeviceAllocator());
  const Tensor d_weight = Tensor::Empty(DType::kF32, {n, k}, DeviceAllocator());
  const Tensor d_scores = Tensor::Empty(DType::kF32, {n, experts}, DeviceAllocator());
  RouteArgs a;
  a.logits = d_logits.view();
  a.bias = d_bias.view();
  a.scores = d_scores.view();
  a.topk_idx = d_idx.view();
  a.topk_weight = d_weight.view();
  a.route_scale = route_scale;
  ASSERT_TRUE(RouteTopK(a).ok());
  const Tensor got_idx = testing::ToHost(d_idx.view());
  for (int64_t i = 0; i < n * k; ++i) ASSERT_EQ(got_idx.data<int32_t>()[i], want_idx[i]) << i;
  EXPECT_TRUE(testing::CloseAndReport("routing weights", testing::ToHost(d_weight.view()).view(),
                                      Tensor::FromFloats({n, k}, want_weight).view(),
                                      {.atol = 1e-6, .rtol = 1e-5}));
  EXPECT_TRUE(testing::CloseAndReport("routing scores", testing::ToHost(d_scores.view()).view(),
                                      Tensor::FromFloats({n, experts}, scores).view(),
                                      {.atol = 1e-6, .rtol = 1e-5}));

  // Hash routing: the token's tid2eid row (ids outside the table give -1 picks).
  const int64_t vocab = 23;
  Tensor tid2eid = Tensor::Empty(DType::kI32, {vocab, k});
  for (int64_t i = 0; i < vocab * k; ++i) tid2eid.data<int32_t>()[i] = static_cast<int32_t>((i * 7) % experts);
  Tensor token_ids = Tensor::Empty(DType::kI32, {n});
  for (int64_t t = 0; t < n; ++t) token_ids.data<int32_t>()[t] = static_cast<int32_t>((t * 5) % vocab);
  const Tensor d_tid2eid = testing::ToDevice(tid2eid, DType::kI32);
  const Tensor d_tokens = testing::ToDevice(token_ids, DType::kI32);
  a.hash = true;
  a.tid2eid = d_tid2eid.view();
  a.token_ids = d_tokens.view();
  ASSERT_TRUE(RouteTopK(a).ok());
  const Tensor hash_idx = testing::ToHost(d_idx.view());
  const Tensor hash_weight = testing::ToHost(d_weight.view());
  for (int64_t t = 0; t < n; ++t) {
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = tid2eid.data<int32_t>()[token_ids.data<int32_t>()[t] * k + j];
      ASSERT_EQ(hash_idx.data<int32_t>()[t * k + j], e);
      sum += scores[t * experts + e];
    }
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = hash_idx.data<int32_t>()[t * k + j];
      EXPECT_NEAR(hash_weight.data<float>()[t * k + j],
                  scores[t * experts + e] / (sum + 1e-20f) * route_scale, 1e-5);
    }
  }
}

// A tiny MoE layer's weights, f32 values already rounded to bf16.
struct MoeCase {
  model::ModelConfig config;
  model::MoeWeights weights;
};

MoeCase MakeCase(int64_t hidden, int64_t inter, int64_t experts, int64_t k, int64_t vocab) {
  MoeCase c;
  c.config.hidden_size = hidden;
  c.config.moe_intermediate_size = inter;
  c.config.num_routed_experts = experts;
  c.config.num_experts_per_tok = k;
  c.config.num_shared_experts = 1;
  c.config.routed_scaling_factor = 1.5;
  c.config.swiglu_limit = 10.0;
  c.config.vocab_size = vocab;
  auto& w = c.weights;
  w.gate = testing::RoundToBf16(RandomNormal({experts, hidden}, 31, 0.2f));
  w.bias = RandomNormal({experts}, 32, 0.05f);
  w.tid2eid = Tensor::Empty(DType::kI32, {vocab, k});
  for (int64_t v = 0; v < vocab; ++v) {
    for (int64_t j = 0; j < k; ++j) w.tid2eid.data<int32_t>()[v * k + j] = static_cast<int32_t>((v + 3 * j) % experts);
  }
  w.w1 = testing::RoundToBf16(RandomNormal({experts, inter, hidden}, 33, 0.15f));
  w.w3 = testing::RoundToBf16(RandomNormal({experts, inter, hidden}, 34, 0.15f));
  w.w2 = testing::RoundToBf16(RandomNormal({experts, hidden, inter}, 35, 0.15f));
  w.shared_w1 = testing::RoundToBf16(RandomNormal({inter, hidden}, 36, 0.15f));
  w.shared_w3 = testing::RoundToBf16(RandomNormal({inter, hidden}, 37, 0.15f));
  w.shared_w2 = testing::RoundToBf16(RandomNormal({hidden, inter}, 38, 0.15f));
  return c;
}

void CheckMoeBlock(model::MlpType type, bool device_plan = false) {
  const int64_t n = 17, hidden = 72, inter = 40, experts = 8, k = 3, vocab = 29;
  const MoeCase c = MakeCase(hidden, inter, experts, k, vocab);
  const Tensor x = testing::RoundToBf16(RandomNormal({n, hidden}, 41));
  Tensor token_ids = Tensor::Empty(DType::kI32, {n});
  for (int64_t t = 0; t < n; ++t) token_ids.data<int32_t>()[t] = static_cast<int32_t>((t * 11) % vocab);
  model::MoeActivations acts;
  Tensor want = Tensor::Empty(DType::kF32, {n, hidden});
  model::MoeForward(c.weights, type, c.config, x.view(), token_ids.view(), &acts, want.view());

  auto handle_or = GemmHandle::Create();
  ASSERT_TRUE(handle_or.ok());
  GemmHandle& handle = **handle_or;
  auto dev = [](int64_t a, int64_t b, DType d) { return Tensor::Empty(d, {a, b}, DeviceAllocator()); };
  const Tensor dx = testing::ToDevice(x, DType::kBF16);
  const Tensor d_gate = testing::ToDevice(c.weights.gate, DType::kBF16);
  const Tensor d_bias = testing::ToDevice(c.weights.bias, DType::kF32);
  const Tensor d_tid2eid = testing::ToDevice(c.weights.tid2eid, DType::kI32);
  const Tensor d_tokens = testing::ToDevice(token_ids, DType::kI32);
  const Tensor d_w1 = testing::ToDevice(c.weights.w1, DType::kBF16);
  const Tensor d_w3 = testing::ToDevice(c.weights.w3, DType::kBF16);
  const Tensor d_w2 = testing::ToDevice(c.weights.w2, DType::kBF16);
  const Tensor d_sw1 = testing::ToDevice(c.weights.shared_w1, DType::kBF16);
  const Tensor d_sw3 = testing::ToDevice(c.weights.shared_w3, DType::kBF16);
  const Tensor d_sw2 = testing::ToDevice(c.weights.shared_w2, DType::kBF16);

  // Router.
  const Tensor logits = dev(n, experts, DType::kF32);
  ASSERT_TRUE(Gemm(handle, dx.view(), d_gate.view(), logits.view()).ok());
  const Tensor idx = dev(n, k, DType::kI32), weight = dev(n, k, DType::kF32);
  RouteArgs r;
  r.logits = logits.view();
  r.bias = d_bias.view();
  r.tid2eid = d_tid2eid.view();
  r.token_ids = d_tokens.view();
  r.topk_idx = idx.view();
  r.topk_weight = weight.view();
  r.hash = type == model::MlpType::kHashMoe;
  r.route_scale = 1.5f;
  ASSERT_TRUE(RouteTopK(r).ok());
  const Tensor host_idx = testing::ToHost(idx.view());
  for (int64_t i = 0; i < n * k; ++i) {
    ASSERT_EQ(host_idx.data<int32_t>()[i], acts.topk_idx.data<int32_t>()[i]) << "pick " << i;
  }
  // Plan on the host (the CPU's order) or on the device, permutation and experts on the device.
  const plan::MoeDispatchPlan plan =
      plan::BuildMoeDispatchPlan(host_idx.data<int32_t>(), n, k, experts);
  const int64_t picks = device_plan ? n * k : static_cast<int64_t>(plan.slots.size());
  const Tensor slots = dev(n * k, 1, DType::kI32), pick_of_slot = dev(n * k, 1, DType::kI32);
  const Tensor offsets = Tensor::Empty(DType::kI32, {experts + 1}, DeviceAllocator());
  if (device_plan) {
    ASSERT_TRUE(BuildMoePlanOnDevice(idx.view(), experts, offsets.view(),
                                     slots.view().Reshape({n * k}),
                                     pick_of_slot.view().Reshape({n * k}))
                    .ok());
  } else {
    ASSERT_TRUE(UploadMoePlan(plan, slots.view(), pick_of_slot.view()).ok());
  }
  const Tensor xp = dev(picks, hidden, DType::kBF16);
  ASSERT_TRUE(MoeGather(dx.view(), slots.view(), k, xp.view()).ok());
  const Tensor g = dev(picks, inter, DType::kBF16), u = dev(picks, inter, DType::kBF16);
  const Tensor eo = dev(picks, hidden, DType::kF32);
  if (device_plan) {
    ASSERT_TRUE(GroupedGemmDeviceOffsets(xp.view(), d_w1.view(), offsets.view(), g.view()).ok());
    ASSERT_TRUE(GroupedGemmDeviceOffsets(xp.view(), d_w3.view(), offsets.view(), u.view()).ok());
    ASSERT_TRUE(SwiGluClamp(g.view(), u.view(), 10.0f, g.view()).ok());
    ASSERT_TRUE(GroupedGemmDeviceOffsets(g.view(), d_w2.view(), offsets.view(), eo.view()).ok());
  } else {
    ASSERT_TRUE(GroupedGemm(handle, xp.view(), d_w1.view(), plan.expert_offsets, g.view()).ok());
    ASSERT_TRUE(GroupedGemm(handle, xp.view(), d_w3.view(), plan.expert_offsets, u.view()).ok());
    ASSERT_TRUE(SwiGluClamp(g.view(), u.view(), 10.0f, g.view()).ok());
    ASSERT_TRUE(GroupedGemm(handle, g.view(), d_w2.view(), plan.expert_offsets, eo.view()).ok());
  }
  // Shared expert.
  const Tensor sg = dev(n, inter, DType::kBF16), su = dev(n, inter, DType::kBF16);
  ASSERT_TRUE(Gemm(handle, dx.view(), d_sw1.view(), sg.view()).ok());
  ASSERT_TRUE(Gemm(handle, dx.view(), d_sw3.view(), su.view()).ok());
  ASSERT_TRUE(SwiGluClamp(sg.view(), su.view(), 10.0f, sg.view()).ok());
  const Tensor so = dev(n, hidden, DType::kF32);
  ASSERT_TRUE(Gemm(handle, sg.view(), d_sw2.view(), so.view()).ok());
  const Tensor out = dev(n, hidden, DType::kBF16);
  ASSERT_TRUE(MoeCombine(eo.view(), pick_of_slot.view(), weight.view(), so.view(), out.view()).ok());
  // The bf16 gate/up/activation rows add ~2^-9 relative error each before the down projection.
  float max_ref = 0.0f;
  for (int64_t i = 0; i < want.numel(); ++i) max_ref = std::max(max_ref, std::abs(want.data<float>()[i]));
  const testing::Tolerance tolerance{.atol = 1e-2 * max_ref, .rtol = 1e-2};
  EXPECT_TRUE(testing::CloseAndReport(
      std::string(type == model::MlpType::kHashMoe ? "moe block (hash)" : "moe block (top-k)") +
          (device_plan ? ", device plan" : ", host plan"),
      testing::ToHost(out.view()).view(), want.view(), tolerance));
  const testing::CompareStats stats =
      testing::Compare(testing::ToHost(out.view()).view(), want.view(), tolerance);
  EXPECT_LT(stats.rel_error_by_norm, 5e-3);
}

TEST(CudaMoe, BlockMatchesCpuMoeForwardTopK) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckMoeBlock(model::MlpType::kMoe);
}

TEST(CudaMoe, BlockMatchesCpuMoeForwardHash) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckMoeBlock(model::MlpType::kHashMoe);
}

TEST(CudaMoe, DevicePlanBlockMatchesCpuMoeForward) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckMoeBlock(model::MlpType::kMoe, /*device_plan=*/true);
  CheckMoeBlock(model::MlpType::kHashMoe, /*device_plan=*/true);
}

// The device plan is the host plan, entry for entry (offsets, slot order, pick of each slot).
TEST(CudaMoe, DevicePlanIdenticalToHostPlan) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t n, k, experts;
    int mode;  // 0 random with dropped picks, 1 random, 2 all on one expert
  };
  for (const Case c : {Case{17, 6, 37, 0}, Case{1, 6, 32, 1}, Case{300, 6, 32, 1},
                       Case{256, 6, 32, 2}, Case{33, 3, 1024, 0}}) {
    const int64_t slots_n = c.n * c.k;
    Tensor idx = Tensor::Empty(DType::kI32, {c.n, c.k});
    uint64_t state = 12345 + c.n;
    for (int64_t i = 0; i < slots_n; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      int32_t e = static_cast<int32_t>((state >> 33) % c.experts);
      if (c.mode == 0 && (state >> 20) % 7 == 0) e = -1;
      if (c.mode == 2) e = 3;
      idx.data<int32_t>()[i] = e;
    }
    const plan::MoeDispatchPlan want =
        plan::BuildMoeDispatchPlan(idx.data<int32_t>(), c.n, c.k, c.experts);
    const Tensor d_idx = testing::ToDevice(idx, DType::kI32);
    const Tensor offsets = Tensor::Empty(DType::kI32, {c.experts + 1}, DeviceAllocator());
    const Tensor slots = Tensor::Empty(DType::kI32, {slots_n}, DeviceAllocator());
    const Tensor picks = Tensor::Empty(DType::kI32, {slots_n}, DeviceAllocator());
    ASSERT_TRUE(
        BuildMoePlanOnDevice(d_idx.view(), c.experts, offsets.view(), slots.view(), picks.view())
            .ok());
    const Tensor got_offsets = testing::ToHost(offsets.view());
    const Tensor got_slots = testing::ToHost(slots.view());
    const Tensor got_picks = testing::ToHost(picks.view());
    for (int64_t e = 0; e <= c.experts; ++e) {
      ASSERT_EQ(got_offsets.data<int32_t>()[e], want.expert_offsets[e]) << "n " << c.n << " e " << e;
    }
    std::vector<int32_t> want_picks(slots_n, -1);
    for (size_t p = 0; p < want.slots.size(); ++p) want_picks[want.slots[p]] = static_cast<int32_t>(p);
    for (int64_t p = 0; p < slots_n; ++p) {
      const int64_t expected = p < static_cast<int64_t>(want.slots.size()) ? want.slots[p] : -1;
      ASSERT_EQ(got_slots.data<int32_t>()[p], expected) << "n " << c.n << " position " << p;
      ASSERT_EQ(got_picks.data<int32_t>()[p], want_picks[p]) << "n " << c.n << " slot " << p;
    }
  }
}

// The device-offset grouped GEMM against cuBLASLt per expert, every tile: empty experts, experts
// of more than one row tile, K a multiple of 8 (vector loads) and not, bf16 and f32 outputs.
TEST(CudaMoe, GroupedGemmDeviceOffsetsMatchesCublasPerExpert) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto handle_or = GemmHandle::Create();
  ASSERT_TRUE(handle_or.ok());
  const std::vector<int64_t> counts = {5, 0, 150, 1, 64, 0, 65, 17};
  const int64_t experts = static_cast<int64_t>(counts.size());
  const ExpertOffsets expert_offsets = MakeExpertOffsets(counts);
  const std::vector<int64_t>& offsets = expert_offsets.host;
  const Tensor& d_offsets = expert_offsets.device;
  const int64_t picks = offsets.back(), rows = picks + 9;  // spare rows past the picks
  const std::pair<GroupedGemmTile, const char*> tiles[] = {
      {GroupedGemmTile::kSmall16x64, "16x64"},
      {GroupedGemmTile::kWide64x128, "64x128"}};
  // k 72 and 37: one or two K tiles; 520: nine, so the cp.async rings (3 and 6 stages) wrap.
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{130, 72}, {40, 37}, {72, 520}}) {
    for (const DType out_dtype : {DType::kF32, DType::kBF16}) {
      const Tensor x = testing::RoundToBf16(RandomNormal({rows, k}, 51 + k));
      const Tensor w = testing::RoundToBf16(RandomNormal({experts, n, k}, 52 + n, 0.2f));
      const Tensor dx = testing::ToDevice(x, DType::kBF16);
      const Tensor dw = testing::ToDevice(w, DType::kBF16);
      const Tensor want = Tensor::Empty(out_dtype, {picks, n}, DeviceAllocator());
      ASSERT_TRUE(
          GroupedGemm(**handle_or, dx.view().Slice(0, 0, picks), dw.view(), offsets, want.view())
              .ok());
      const Tensor want_host = testing::ToHost(want.view());
      const bool bf16 = out_dtype == DType::kBF16;
      for (const auto& [tile, tile_name] : tiles) {
        const Tensor got = Tensor::Empty(out_dtype, {rows, n}, DeviceAllocator());
        ASSERT_TRUE(
            GroupedGemmDeviceOffsets(dx.view(), dw.view(), d_offsets.view(), got.view(), tile)
                .ok());
        const Tensor got_host = testing::ToHost(got.view().Slice(0, 0, picks));
        EXPECT_TRUE(
            testing::CloseAndReport(absl::StrFormat("grouped gemm device offsets %s n %d k %d %s",
                                                    tile_name, n, k, bf16 ? "bf16" : "f32"),
                                    got_host.view(), want_host.view(),
                                    {.atol = bf16 ? 2e-2 : 1e-4, .rtol = bf16 ? 8e-3 : 1e-4}));
      }
    }
  }
}

// Row counts of `experts` experts, zero but for `hot` (expert, rows) pairs.
std::vector<int64_t> SparseCounts(int64_t experts,
                                  const std::vector<std::pair<int64_t, int64_t>>& hot) {
  std::vector<int64_t> counts(experts, 0);
  for (const auto& [e, rows] : hot) counts[e] = rows;
  return counts;
}

// The Hopper kernel (GroupedGemmTile::kWgmma) against the host reference at the mid config's
// expert shapes (gate/up: N 1024, K 2048, bf16 out; down: N 2048, K 1024, f32 out; each also in
// the other dtype), on uneven experts: 0 rows (four of them, the last expert too), 1, 3, 16 (one
// whole box), 47, 64, 65 (a fifth box), 129 and 200 (a second pass slot of 1 and 72 tokens) and
// 300 (three: 128, 128, 44). Then 70 experts at a small shape (N 256, K 512), so that the
// producer warp's lanes count three experts each: most empty, a hot one of 300 rows among them
// past lane 0's. Rows from offsets[E] on hold a sentinel that must survive; without such rows the
// last expert's boxes read past R (TMA's zero fill). kAuto must pick the same kernel, and a second
// launch give identical bits. Skips where the kernel does not apply (a device other than compute
// capability 9.0).
TEST(CudaMoe, GroupedGemmWgmmaMatchesHostReference) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  struct Case {
    std::vector<int64_t> counts;
    int64_t n, k;
  };
  const std::vector<int64_t> mid_counts = {47, 0, 1, 64, 65, 200, 0, 16, 129, 3, 0, 300, 0};
  const Case cases[] = {
      {mid_counts, 1024, 2048},
      {mid_counts, 2048, 1024},
      {SparseCounts(70, {{3, 5}, {17, 300}, {40, 128}, {41, 1}, {66, 129}, {69, 20}}), 256, 512}};
  core::ThreadPool pool(8);
  constexpr float kSentinel = -1024.0f;  // exact in bf16
  for (const Case& c : cases) {
    const std::vector<int64_t>& counts = c.counts;
    const int64_t n = c.n, k = c.k;
    const int64_t experts = static_cast<int64_t>(counts.size());
    const ExpertOffsets expert_offsets = MakeExpertOffsets(counts);
    const std::vector<int64_t>& offsets = expert_offsets.host;
    const Tensor& d_offsets = expert_offsets.device;
    const int64_t picks = offsets.back();
    for (const int64_t spare : {int64_t{0}, int64_t{9}}) {
      const int64_t rows = picks + spare;
      const Tensor x = testing::RoundToBf16(RandomNormal({rows, k}, 61 + spare));
      const Tensor w = testing::RoundToBf16(RandomNormal({experts, n, k}, 62 + n, 0.02f));
      const Tensor dx = testing::ToDevice(x, DType::kBF16);
      const Tensor dw = testing::ToDevice(w, DType::kBF16);
      if (!GroupedGemmWgmmaApplies(dx.view(), dw.view())) {
        GTEST_SKIP() << "the wgmma kernel needs a compute capability 9.0 device";
      }
      // Host reference: each expert's rows times its weights, f32.
      Tensor want = Tensor::Empty(DType::kF32, {picks, n});
      for (int64_t e = 0; e < experts; ++e) {
        if (counts[e] == 0) continue;
        cpu::LinearRef<float>(x.data<float>() + offsets[e] * k, k, w.data<float>() + e * n * k, k,
                              want.data<float>() + offsets[e] * n, n, counts[e], n, k, &pool);
      }
      Tensor sentinel = Tensor::Empty(DType::kF32, {rows, n});
      for (int64_t i = 0; i < rows * n; ++i) sentinel.data<float>()[i] = kSentinel;
      for (const DType out_dtype : {DType::kBF16, DType::kF32}) {
        const bool bf16 = out_dtype == DType::kBF16;
        const std::string name = absl::StrFormat("wgmma grouped gemm E %d n %d k %d spare %d %s",
                                                 experts, n, k, spare, bf16 ? "bf16" : "f32");
        const Tensor got = testing::ToDevice(sentinel, out_dtype);
        const absl::Status s = GroupedGemmDeviceOffsets(dx.view(), dw.view(), d_offsets.view(),
                                                        got.view(), GroupedGemmTile::kWgmma);
        ASSERT_TRUE(s.ok()) << name << ": " << s;
        const Tensor got_host = testing::ToHost(got.view());
        EXPECT_TRUE(
            testing::CloseAndReport(name, got_host.view().Slice(0, 0, picks), want.view(),
                                    {.atol = bf16 ? 2e-2 : 5e-4, .rtol = bf16 ? 8e-3 : 5e-4}));
        for (int64_t i = picks * n; i < rows * n; ++i) {
          ASSERT_EQ(got_host.data<float>()[i], kSentinel) << name << ": row " << i / n;
        }
        for (const GroupedGemmTile again : {GroupedGemmTile::kAuto, GroupedGemmTile::kWgmma}) {
          const Tensor repeat = testing::ToDevice(sentinel, out_dtype);
          ASSERT_TRUE(
              GroupedGemmDeviceOffsets(dx.view(), dw.view(), d_offsets.view(), repeat.view(), again)
                  .ok());
          const Tensor repeat_host = testing::ToHost(repeat.view());
          EXPECT_EQ(std::memcmp(repeat_host.data<float>(), got_host.data<float>(),
                                sizeof(float) * rows * n),
                    0)
              << name << ": " << (again == GroupedGemmTile::kAuto ? "kAuto" : "a second kWgmma")
              << " differs from kWgmma";
        }
      }
    }
  }
}

// kWgmma asked for shapes it cannot serve (K not a multiple of 64, N not a multiple of 128) is an
// InvalidArgument, not a silent fallback.
TEST(CudaMoe, GroupedGemmWgmmaRejectsUnservedShapes) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor offsets = testing::ToDevice(Tensor::Zeros(DType::kI32, {3}), DType::kI32);
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{128, 72}, {192, 64}}) {
    const Tensor x = Tensor::Empty(DType::kBF16, {4, k}, DeviceAllocator());
    const Tensor w = Tensor::Empty(DType::kBF16, {2, n, k}, DeviceAllocator());
    const Tensor out = Tensor::Empty(DType::kF32, {4, n}, DeviceAllocator());
    const absl::Status s = GroupedGemmDeviceOffsets(x.view(), w.view(), offsets.view(), out.view(),
                                                    GroupedGemmTile::kWgmma);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  }
}

// GroupedGemmSwiGluDeviceOffsets (the fused w1 / w3 / clamped SwiGLU wgmma kernel) against the
// three calls it replaces (GroupedGemmDeviceOffsets into bf16 gate and up, SwiGluClamp), bit for
// bit, at the mid config's shapes (I 1024, K 2048) on uneven experts: 0 rows (four of them, the
// last expert too), 1, 47, 64, 65 (a fifth box), 129 and 200 (a second pass slot) and 300 (three),
// bf16 and f32 out, the config's limit (10), a small one that clamps often, none (0); a second
// launch gives the same bits. Rows from offsets[E] on hold a sentinel that must survive; without
// such rows the last expert's boxes read past R.
TEST(CudaMoe, GroupedGemmSwiGluEqualsThreeCalls) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::vector<int64_t> counts = {47, 0, 1, 64, 65, 200, 0, 129, 0, 300, 0};
  const int64_t experts = static_cast<int64_t>(counts.size()), inter = 1024, k = 2048;
  const ExpertOffsets expert_offsets = MakeExpertOffsets(counts);
  const std::vector<int64_t>& offsets = expert_offsets.host;
  const Tensor& d_offsets = expert_offsets.device;
  const int64_t picks = offsets.back();
  // w scaled so that the gate and up values reach a few units (the small limit clamps them).
  const Tensor w1 = testing::ToDevice(RandomNormal({experts, inter, k}, 71, 0.05f), DType::kBF16);
  const Tensor w3 = testing::ToDevice(RandomNormal({experts, inter, k}, 72, 0.05f), DType::kBF16);
  constexpr float kSentinel = -1024.0f;  // exact in bf16
  for (const int64_t spare : {int64_t{0}, int64_t{9}}) {
    const int64_t rows = picks + spare;
    const Tensor x = testing::ToDevice(RandomNormal({rows, k}, 73 + spare), DType::kBF16);
    if (!GroupedGemmSwiGluApplies(x.view(), w1.view(), w3.view()) ||
        !GroupedGemmWgmmaApplies(x.view(), w1.view())) {
      GTEST_SKIP() << "the wgmma kernels need a compute capability 9.0 device";
    }
    Tensor sentinel = Tensor::Empty(DType::kF32, {rows, inter});
    for (int64_t i = 0; i < rows * inter; ++i) sentinel.data<float>()[i] = kSentinel;
    const Tensor gate = testing::ToDevice(sentinel, DType::kBF16);
    const Tensor up = testing::ToDevice(sentinel, DType::kBF16);
    ASSERT_TRUE(GroupedGemmDeviceOffsets(x.view(), w1.view(), d_offsets.view(), gate.view()).ok());
    ASSERT_TRUE(GroupedGemmDeviceOffsets(x.view(), w3.view(), d_offsets.view(), up.view()).ok());
    const Tensor up_host = testing::ToHost(up.view());
    for (const float limit : {10.0f, 0.75f, 0.0f}) {
      for (const DType out_dtype : {DType::kBF16, DType::kF32}) {
        const std::string name = absl::StrFormat("swiglu grouped gemm spare %d limit %g %s", spare,
                                                 limit, out_dtype == DType::kBF16 ? "bf16" : "f32");
        const Tensor want = Tensor::Empty(out_dtype, {rows, inter}, DeviceAllocator());
        ASSERT_TRUE(SwiGluClamp(gate.view(), up.view(), limit, want.view()).ok()) << name;
        const Tensor got = testing::ToDevice(sentinel, out_dtype);
        const absl::Status s = GroupedGemmSwiGluDeviceOffsets(x.view(), w1.view(), w3.view(),
                                                              d_offsets.view(), limit, got.view());
        ASSERT_TRUE(s.ok()) << name << ": " << s;
        const Tensor got_host = testing::ToHost(got.view());
        const Tensor want_host = testing::ToHost(want.view());
        int64_t mismatches = 0, clamped = 0, first = -1;
        for (int64_t i = 0; i < picks * inter; ++i) {
          const float g = got_host.data<float>()[i], w = want_host.data<float>()[i];
          if (std::memcmp(&g, &w, sizeof(float)) != 0) {
            if (first < 0) first = i;
            ++mismatches;
          }
          if (limit > 0 && std::abs(up_host.data<float>()[i]) > limit) ++clamped;
        }
        first = std::max<int64_t>(first, 0);
        EXPECT_EQ(mismatches, 0) << name << ": first at row " << first / inter << " column "
                                 << first % inter << ": " << got_host.data<float>()[first] << " vs "
                                 << want_host.data<float>()[first];
        if (limit == 0.75f) {
          EXPECT_GT(clamped, 0) << name << ": the limit never bites";
        }
        for (int64_t i = picks * inter; i < rows * inter; ++i) {
          ASSERT_EQ(got_host.data<float>()[i], kSentinel) << name << ": row " << i / inter;
        }
        const Tensor again = testing::ToDevice(sentinel, out_dtype);
        ASSERT_TRUE(GroupedGemmSwiGluDeviceOffsets(x.view(), w1.view(), w3.view(), d_offsets.view(),
                                                   limit, again.view())
                        .ok())
            << name;
        EXPECT_EQ(std::memcmp(testing::ToHost(again.view()).data<float>(), got_host.data<float>(),
                              sizeof(float) * rows * inter),
                  0)
            << name << ": a second launch differs";
      }
    }
  }
}

// Shapes the fused kernel cannot serve (K not a multiple of 64, I not a multiple of 64) and a w3
// unlike w1 are InvalidArgument naming the requirement.
TEST(CudaMoe, GroupedGemmSwiGluRejectsUnservedShapes) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor offsets = testing::ToDevice(Tensor::Zeros(DType::kI32, {3}), DType::kI32);
  struct Case {
    int64_t i, k, i3;
    const char* message;
  };
  for (const Case c : {Case{128, 72, 128, "a positive multiple of 64"},
                       Case{96, 64, 96, "I (w1.shape[1]) a multiple of 64"},
                       Case{128, 64, 64, "w3 [E, I, K] as w1"}}) {
    const Tensor x = Tensor::Empty(DType::kBF16, {4, c.k}, DeviceAllocator());
    const Tensor w1 = Tensor::Empty(DType::kBF16, {2, c.i, c.k}, DeviceAllocator());
    const Tensor w3 = Tensor::Empty(DType::kBF16, {2, c.i3, c.k}, DeviceAllocator());
    const Tensor out = Tensor::Empty(DType::kBF16, {4, c.i}, DeviceAllocator());
    const absl::Status s = GroupedGemmSwiGluDeviceOffsets(x.view(), w1.view(), w3.view(),
                                                          offsets.view(), 10.0f, out.view());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s;
  }
}

TEST(CudaMoe, GroupedGemmDeviceOffsetsRejectsTooManyExperts) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor x = Tensor::Empty(DType::kBF16, {4, 8}, DeviceAllocator());
  const Tensor w = Tensor::Empty(DType::kBF16, {1025, 8, 8}, DeviceAllocator());
  const Tensor offsets = Tensor::Empty(DType::kI32, {1026}, DeviceAllocator());
  const Tensor out = Tensor::Empty(DType::kF32, {4, 8}, DeviceAllocator());
  const absl::Status s = GroupedGemmDeviceOffsets(x.view(), w.view(), offsets.view(), out.view());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("1024 experts"), std::string::npos) << s;
}

}  // namespace
}  // namespace v4rl::kernels::cuda
