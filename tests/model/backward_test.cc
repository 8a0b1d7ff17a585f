// Acceptance of issue 5 at model level, on the committed transformers fixture mixed_small
// (sliding/CSA/HCA layers, hash + top-k MoE, index_topk 3 < 10 entries, batch 2, T = 40):
//  - the mean next-token cross entropy and every parameter gradient equal transformers 5.17
//    autograd in fp32 (grads.safetensors, transformers names): per-tensor relative error by norm
//    <= 1e-4;
//  - parameters transformers leaves without gradient (the lightning indexer) get exactly zero;
//  - per-layer recomputation gives bit-identical gradients;
//  - routing replay with the computed ids leaves loss and gradients bit-identical; other ids
//    change them; malformed replay ids are rejected.
// The per-module float64 finite-difference checks live in tests/kernels/*_backward_test.cc.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "gtest/gtest.h"
#include "model/checkpoint_gradients.h"
#include "model/next_token_loss.h"
#include "tests/model/fixtures.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::model {
namespace {

using testing::FixtureDir;
using ::testing::HasSubstr;
using testing::Reference;
using v4rl::testing::StatusIs;

class BackwardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(FixtureDir("mixed_small") + "/model");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = new Model(*std::move(model));
    reference_ = new Reference("mixed_small");
    ids_ = new core::Tensor(reference_->Get("input_ids"));
    auto base = NextTokenLossAndGradients(*model_, ids_->view());
    ASSERT_TRUE(base.ok()) << base.status();
    base_ = new NextTokenLossResult(*std::move(base));
  }
  static void TearDownTestSuite() {
    delete base_;
    delete ids_;
    delete reference_;
    delete model_;
  }

  // Gradients by checkpoint key.
  static std::map<std::string, core::Tensor> Named(const ModelWeights& grads) {
    auto directory = core::TensorDirectory::Open(FixtureDir("mixed_small") + "/model");
    EXPECT_TRUE(directory.ok()) << directory.status();
    auto named = CheckpointGradients(model_->config, grads, **directory);
    EXPECT_TRUE(named.ok()) << named.status();
    std::map<std::string, core::Tensor> out;
    for (NamedGradient& g : *named) out[g.key] = g.tensor;
    return out;
  }

  static bool BitIdentical(const ModelWeights& a, const ModelWeights& b) {
    const auto na = Named(a), nb = Named(b);
    for (const auto& [key, tensor] : na) {
      const core::Tensor& other = nb.at(key);
      if (!std::equal(tensor.data<float>(), tensor.data<float>() + tensor.numel(),
                      other.data<float>())) {
        return false;
      }
    }
    return true;
  }

  static Model* model_;
  static Reference* reference_;
  static core::Tensor* ids_;
  static NextTokenLossResult* base_;
};

Model* BackwardTest::model_ = nullptr;
Reference* BackwardTest::reference_ = nullptr;
core::Tensor* BackwardTest::ids_ = nullptr;
NextTokenLossResult* BackwardTest::base_ = nullptr;

TEST_F(BackwardTest, LossAndEveryGradientMatchTransformers) {
  const double expected_loss = reference_->Get("loss").data<float>()[0];
  const double loss_error = std::fabs(base_->loss - expected_loss) / std::fabs(expected_loss);
  std::printf("[parity] loss %.7f vs transformers %.7f (relative error %.2e)\n", base_->loss,
              expected_loss, loss_error);
  EXPECT_LE(loss_error, 1e-5);

  auto file = core::SafetensorsFile::Open(FixtureDir("mixed_small") + "/grads.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const std::map<std::string, core::Tensor> ours = Named(base_->grads);
  double worst = 0;
  std::string worst_key;
  for (const core::SafetensorsEntry& entry : (*file)->entries()) {
    auto it = ours.find(entry.name);
    ASSERT_NE(it, ours.end()) << "no gradient for " << entry.name;
    const core::Tensor expected = (*file)->Read(entry);
    const v4rl::testing::CompareStats stats =
        v4rl::testing::Compare(it->second.view(), expected.view());
    if (stats.rel_error_by_norm > worst) {
      worst = stats.rel_error_by_norm;
      worst_key = entry.name;
    }
    EXPECT_TRUE(v4rl::testing::RelErrorByNormAtMost(it->second.view(), expected.view(), 1e-4))
        << entry.name;
  }
  std::printf("[parity] %zu gradients, worst relative error by norm %.3e (%s)\n",
              (*file)->entries().size(), worst, worst_key.c_str());
  // What transformers leaves without gradient (the indexer) is exactly zero here.
  for (const auto& [key, tensor] : ours) {
    if ((*file)->Find(key) != nullptr) continue;
    EXPECT_NE(key.find("indexer"), std::string::npos) << key << " has no transformers gradient";
    for (float v : tensor.ToFloatVector()) ASSERT_EQ(v, 0.0f) << key;
  }
}

TEST_F(BackwardTest, RecomputationGivesIdenticalGradients) {
  NextTokenLossOptions options;
  options.backward.recompute = true;
  V4RL_ASSERT_OK_AND_ASSIGN(const NextTokenLossResult recomputed,
                            NextTokenLossAndGradients(*model_, ids_->view(), options));
  EXPECT_EQ(recomputed.loss, base_->loss);
  EXPECT_TRUE(BitIdentical(recomputed.grads, base_->grads));
}

TEST_F(BackwardTest, ReplayingTheComputedRoutingChangesNothing) {
  NextTokenLossOptions options;
  for (const core::Tensor& ids : base_->routed_experts)
    options.routing_replay.push_back(ids.view());
  V4RL_ASSERT_OK_AND_ASSIGN(const NextTokenLossResult replayed,
                            NextTokenLossAndGradients(*model_, ids_->view(), options));
  EXPECT_EQ(replayed.loss, base_->loss);
  EXPECT_TRUE(BitIdentical(replayed.grads, base_->grads));
}

TEST_F(BackwardTest, ReplayingOtherRoutingChangesLossAndGradients) {
  // Shift every pick of layer 2 (a top-k layer) to the next expert, keeping picks distinct.
  std::vector<core::Tensor> routing;
  NextTokenLossOptions options;
  for (const core::Tensor& ids : base_->routed_experts) {
    routing.push_back(core::Tensor::CopyOf(ids.view()));
    options.routing_replay.push_back(routing.back().view());
  }
  const int64_t experts = model_->config.num_routed_experts;
  int32_t* layer2 = routing[2].data<int32_t>();
  for (int64_t i = 0; i < routing[2].numel(); ++i) layer2[i] = (layer2[i] + 1) % experts;
  V4RL_ASSERT_OK_AND_ASSIGN(const NextTokenLossResult replayed,
                            NextTokenLossAndGradients(*model_, ids_->view(), options));
  EXPECT_NE(replayed.loss, base_->loss);
  EXPECT_FALSE(BitIdentical(replayed.grads, base_->grads));
  // The replayed ids are the ones used.
  EXPECT_TRUE(
      std::equal(layer2, layer2 + routing[2].numel(), replayed.routed_experts[2].data<int32_t>()));
  // Layer 2's router still gets gradient through the (replayed) picks' scores.
  double norm = 0;
  for (float v : replayed.grads.layers[2].ffn.gate.ToFloatVector()) norm += v * v;
  EXPECT_GT(norm, 0.0);
}

TEST_F(BackwardTest, RejectsMalformedRoutingReplay) {
  NextTokenLossOptions options;
  options.routing_replay.push_back(base_->routed_experts[0].view());
  EXPECT_THAT(NextTokenLossAndGradients(*model_, ids_->view(), options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_layers")));
  std::vector<core::Tensor> routing;
  options.routing_replay.clear();
  for (const core::Tensor& ids : base_->routed_experts) {
    routing.push_back(core::Tensor::CopyOf(ids.view()));
    options.routing_replay.push_back(routing.back().view());
  }
  routing[1].data<int32_t>()[5] = static_cast<int32_t>(model_->config.num_routed_experts);
  EXPECT_THAT(NextTokenLossAndGradients(*model_, ids_->view(), options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("routing_replay[1]")));
}

TEST_F(BackwardTest, RejectsSequencesWithoutANextToken) {
  const core::Tensor one = core::Tensor::CopyOf(ids_->view().Slice(1, 0, 1));
  EXPECT_THAT(NextTokenLossAndGradients(*model_, one.view()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("seq_len >= 2")));
}

}  // namespace
}  // namespace v4rl::model
