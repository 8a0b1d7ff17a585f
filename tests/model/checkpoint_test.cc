// Checkpoint loading: FP8 block-scaled and packed FP4 decoding against hand-computed values, the
// three key namings (DeepSeek hub, transformers modules with merged experts, transformers'
// save_pretrained output), sharded directories, and the single error that lists every missing,
// unexpected and mis-shaped tensor.
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint_names.h"
#include "model/params.h"
#include "model/quant.h"
#include "model/weights.h"
#include "tests/model/fixtures.h"
#include "tests/model/random_model.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;
using ::testing::AllOf;
using ::testing::HasSubstr;
using v4rl::testing::StatusIs;

Tensor Bytes(DType dtype, core::Shape shape, std::vector<uint8_t> bytes) {
  Tensor t = Tensor::Empty(dtype, shape);
  std::copy(bytes.begin(), bytes.end(), t.data<uint8_t>());
  return t;
}

TEST(DecodeTest, Fp8WithUe8m0BlockScales) {
  // [130, 2]: rows 0..127 use scale row 0 (2^1), rows 128..129 scale row 1 (2^-1).
  std::vector<uint8_t> codes(260, 0x38);  // 1.0
  codes[1] = 0x40;                        // 2.0
  codes[2] = 0xB8;                        // -1.0
  codes[257] = 0x3C;                      // 1.5
  const Tensor weight = Bytes(DType::kF8E4M3, {130, 2}, codes);
  const Tensor scale = Bytes(DType::kF8E8M0, {2, 1}, {128, 126});
  V4RL_ASSERT_OK_AND_ASSIGN(const Tensor w, DecodeToF32(weight.view(), scale.view(), {130, 2},
                                                        "w"));
  EXPECT_EQ(w.data<float>()[0], 2.0f);
  EXPECT_EQ(w.data<float>()[1], 4.0f);
  EXPECT_EQ(w.data<float>()[2], -2.0f);
  EXPECT_EQ(w.data<float>()[256], 0.5f);
  EXPECT_EQ(w.data<float>()[257], 0.75f);
  // fp32 multipliers (transformers' weight_scale_inv) decode the same way.
  const Tensor f32_scale = Tensor::FromFloats({2, 1}, {2.0f, 0.5f});
  V4RL_ASSERT_OK_AND_ASSIGN(const Tensor w2,
                            DecodeToF32(weight.view(), f32_scale.view(), {130, 2}, "w"));
  EXPECT_EQ(w2.data<float>()[257], 0.75f);
}

TEST(DecodeTest, PackedFp4LowNibbleFirstWithPer32Scales) {
  // One row of 64 values: byte c holds elements 2c (low nibble) and 2c + 1 (high nibble).
  std::vector<uint8_t> packed(32, 0x00);
  packed[0] = 0x21;   // element 0 = code 1 (0.5), element 1 = code 2 (1.0)
  packed[1] = 0xF7;   // element 2 = code 7 (6.0), element 3 = code 15 (-6.0)
  packed[16] = 0x9B;  // element 32 = code 11 (-1.5), element 33 = code 9 (-0.5)
  const Tensor weight = Bytes(DType::kI8, {1, 32}, packed);
  const Tensor scale = Bytes(DType::kF8E8M0, {1, 2}, {127, 129});  // 1 and 4
  V4RL_ASSERT_OK_AND_ASSIGN(const Tensor w,
                            DecodeToF32(weight.view(), scale.view(), {1, 64}, "expert"));
  EXPECT_EQ(w.data<float>()[0], 0.5f);
  EXPECT_EQ(w.data<float>()[1], 1.0f);
  EXPECT_EQ(w.data<float>()[2], 6.0f);
  EXPECT_EQ(w.data<float>()[3], -6.0f);
  EXPECT_EQ(w.data<float>()[4], 0.0f);
  EXPECT_EQ(w.data<float>()[32], -6.0f);
  EXPECT_EQ(w.data<float>()[33], -2.0f);
}

TEST(DecodeTest, RejectsFp8WithoutScaleAndBadShapes) {
  const Tensor weight = Bytes(DType::kF8E4M3, {2, 2}, {0x38, 0x38, 0x38, 0x38});
  EXPECT_THAT(DecodeToF32(weight.view(), core::TensorView(), {2, 2}, "layers.0.attn.wq_a"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("layers.0.attn.wq_a"), HasSubstr("without its block"))));
  const Tensor scale = Bytes(DType::kF8E8M0, {2, 1}, {127, 127});
  EXPECT_FALSE(DecodeToF32(weight.view(), scale.view(), {2, 2}, "w").ok());
  const Tensor plain = Tensor::Zeros(DType::kF32, {2, 3});
  EXPECT_THAT(DecodeToF32(plain.view(), core::TensorView(), {3, 2}, "w"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shape mismatch")));
}

TEST(CheckpointNamesTest, MapsEverySpellingToTheHubName) {
  EXPECT_EQ(CanonicalTensorName("model.layers.3.self_attn.q_a_proj.weight"),
            "layers.3.attn.wq_a.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.3.self_attn.q_a_proj.weight_scale_inv"),
            "layers.3.attn.wq_a.scale");
  EXPECT_EQ(CanonicalTensorName(
                "model.layers.2.self_attn.compressor.indexer.scorer.weights_proj.weight"),
            "layers.2.attn.indexer.weights_proj.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.2.self_attn.compressor.indexer.weights_proj.weight"),
            "layers.2.attn.indexer.weights_proj.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.1.attn.norm.weight"),
            "layers.1.attn.kv_norm.weight");
  EXPECT_EQ(CanonicalTensorName("model.layers.0.mlp.experts.gate_up_proj"),
            "layers.0.ffn.experts.gate_up_proj");
  EXPECT_EQ(CanonicalTensorName("model.embed_tokens.weight"), "embed.weight");
  EXPECT_EQ(CanonicalTensorName("lm_head.weight"), "head.weight");
  EXPECT_EQ(CanonicalTensorName("model.hc_head.hc_fn"), "hc_head_fn");
  EXPECT_EQ(CanonicalTensorName("layers.7.ffn.experts.5.w2.scale"),
            "layers.7.ffn.experts.5.w2.scale");
  EXPECT_EQ(CanonicalTensorName("mtp.0.hc_head_fn"), "mtp.0.hc_head_fn");
}

// transformers' module name of a canonical (hub) name inside a layer, for writing test files.
std::string HfLayerName(const std::string& rest) {
  static const std::map<std::string, std::string> kNames = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"hc_attn_fn", "attn_hc.fn"}, {"hc_attn_base", "attn_hc.base"},
      {"hc_attn_scale", "attn_hc.scale"}, {"hc_ffn_fn", "ffn_hc.fn"},
      {"hc_ffn_base", "ffn_hc.base"}, {"hc_ffn_scale", "ffn_hc.scale"},
      {"attn.wq_a.weight", "self_attn.q_a_proj.weight"},
      {"attn.q_norm.weight", "self_attn.q_a_norm.weight"},
      {"attn.wq_b.weight", "self_attn.q_b_proj.weight"},
      {"attn.wkv.weight", "self_attn.kv_proj.weight"},
      {"attn.kv_norm.weight", "self_attn.kv_norm.weight"},
      {"attn.wo_a.weight", "self_attn.o_a_proj.weight"},
      {"attn.wo_b.weight", "self_attn.o_b_proj.weight"},
      {"attn.attn_sink", "self_attn.sinks"},
      {"attn.compressor.wkv.weight", "self_attn.compressor.kv_proj.weight"},
      {"attn.compressor.wgate.weight", "self_attn.compressor.gate_proj.weight"},
      {"attn.compressor.ape", "self_attn.compressor.position_bias"},
      {"attn.compressor.norm.weight", "self_attn.compressor.kv_norm.weight"},
      {"attn.indexer.wq_b.weight", "self_attn.compressor.indexer.q_b_proj.weight"},
      {"attn.indexer.weights_proj.weight",
       "self_attn.compressor.indexer.scorer.weights_proj.weight"},
      {"attn.indexer.compressor.wkv.weight", "self_attn.compressor.indexer.kv_proj.weight"},
      {"attn.indexer.compressor.wgate.weight", "self_attn.compressor.indexer.gate_proj.weight"},
      {"attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"},
      {"attn.indexer.compressor.norm.weight", "self_attn.compressor.indexer.kv_norm.weight"},
      {"ffn.gate.weight", "mlp.gate.weight"},
      {"ffn.gate.bias", "mlp.gate.e_score_correction_bias"},
      {"ffn.gate.tid2eid", "mlp.gate.tid2eid"},
      {"ffn.shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight"},
      {"ffn.shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight"},
      {"ffn.shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight"},
  };
  auto it = kNames.find(rest);
  return it == kNames.end() ? "" : it->second;
}

enum class Naming { kHub, kTransformers, kSavePretrained };

// Writes the weights of `model` under `naming`: hub names with per-expert tensors, transformers
// module names with merged experts, or save_pretrained's prefixed hub names (attn.norm quirk).
// Returns the tensors keyed by file name so tests can drop or corrupt some first.
std::map<std::string, Tensor> CheckpointTensors(const Model& model, Naming naming) {
  std::map<std::string, Tensor> out;
  ModelWeights copy = model.weights;
  const ModelConfig& config = model.config;
  VisitParams(config, &copy, /*include_mtp=*/false, [&](const ParamSpec& spec, Tensor* slot) {
    const std::string& name = spec.name;
    if (spec.is_routed_experts) {
      const std::string prefix = name.substr(0, name.rfind("experts.") + 8);
      const std::string proj = name.substr(prefix.size(), 2);
      if (naming == Naming::kTransformers) {
        const size_t layer_end = name.find(".ffn.");
        const std::string layer = "model." + name.substr(0, layer_end) + ".mlp.experts.";
        if (proj == "w2") {
          out[layer + "down_proj"] = *slot;
        } else {
          // gate_up_proj [E, 2I, H]: w1 rows then w3 rows per expert.
          const std::string key = layer + "gate_up_proj";
          const int64_t e = spec.shape[0], rows = spec.shape[1], cols = spec.shape[2];
          if (!out.count(key)) out[key] = Tensor::Zeros(DType::kF32, {e, 2 * rows, cols});
          for (int64_t i = 0; i < e; ++i) {
            std::copy(slot->data<float>() + i * rows * cols,
                      slot->data<float>() + (i + 1) * rows * cols,
                      out[key].data<float>() + (i * 2 + (proj == "w3")) * rows * cols);
          }
        }
        return;
      }
      for (int64_t e = 0; e < spec.shape[0]; ++e) {
        out[absl::StrCat(naming == Naming::kSavePretrained ? "model." : "", prefix, e, ".", proj,
                         ".weight")] = Tensor::CopyOf(slot->view().Select(0, e));
      }
      return;
    }
    std::string key = name;
    if (naming == Naming::kTransformers) {
      const size_t dot = name.find('.', name.find('.') + 1);
      if (name.rfind("layers.", 0) == 0) {
        key = "model." + name.substr(0, dot + 1) + HfLayerName(name.substr(dot + 1));
      } else if (name == "embed.weight") {
        key = "model.embed_tokens.weight";
      } else if (name == "head.weight") {
        key = "lm_head.weight";
      } else if (name.rfind("hc_head_", 0) == 0) {
        key = "model.hc_head.hc_" + name.substr(8);
      } else {
        key = "model." + name;
      }
    } else if (naming == Naming::kSavePretrained) {
      const size_t at = key.find("attn.kv_norm.weight");
      if (at != std::string::npos) key.replace(at, 19, "attn.norm.weight");
      key = "model." + key;
    }
    out[key] = *slot;
  });
  return out;
}

std::string WriteCheckpoint(const std::map<std::string, Tensor>& tensors, const std::string& dir,
                            int64_t max_shard_bytes = 0) {
  const std::string path = ::testing::TempDir() + "/" + dir;
  std::filesystem::remove_all(path);
  std::filesystem::create_directories(path);
  std::vector<core::NamedTensor> named;
  for (const auto& [name, tensor] : tensors) named.push_back({name, tensor.view()});
  if (max_shard_bytes > 0) {
    EXPECT_TRUE(core::WriteShardedSafetensors(path, named, max_shard_bytes).ok());
  } else {
    EXPECT_TRUE(core::WriteSafetensors(path + "/model.safetensors", named).ok());
  }
  return path;
}

void ExpectSameWeights(const Model& expected, const ModelWeights& actual) {
  ModelWeights a = expected.weights;
  ModelWeights b = actual;
  std::vector<Tensor*> slots_a, slots_b;
  VisitParams(expected.config, &a, false, [&](const ParamSpec&, Tensor* t) { slots_a.push_back(t); });
  VisitParams(expected.config, &b, false, [&](const ParamSpec&, Tensor* t) { slots_b.push_back(t); });
  ASSERT_EQ(slots_a.size(), slots_b.size());
  const std::vector<ParamSpec> specs = ModelParamSpecs(expected.config, false);
  for (size_t i = 0; i < slots_a.size(); ++i) {
    ASSERT_TRUE(slots_b[i]->defined()) << specs[i].name;
    ASSERT_EQ(slots_a[i]->view().nbytes(), slots_b[i]->view().nbytes()) << specs[i].name;
    EXPECT_EQ(0, std::memcmp(slots_a[i]->data<uint8_t>(), slots_b[i]->data<uint8_t>(),
                             slots_a[i]->view().nbytes()))
        << specs[i].name;
  }
}

TEST(LoadWeightsTest, LoadsAllThreeNamings) {
  const Model model = testing::RandomModel(TinyConfig(), 21);
  for (Naming naming : {Naming::kHub, Naming::kTransformers, Naming::kSavePretrained}) {
    const std::string dir = WriteCheckpoint(CheckpointTensors(model, naming),
                                            absl::StrCat("naming_", static_cast<int>(naming)));
    V4RL_ASSERT_OK_AND_ASSIGN(const ModelWeights loaded, LoadWeights(model.config, dir));
    ExpectSameWeights(model, loaded);
    EXPECT_TRUE(loaded.mtp.empty());  // no mtp.* tensors written
  }
}

TEST(LoadWeightsTest, LoadsShardedDirectories) {
  const Model model = testing::RandomModel(TinyConfig(), 22);
  const std::string dir =
      WriteCheckpoint(CheckpointTensors(model, Naming::kHub), "sharded", 64 << 10);
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  V4RL_ASSERT_OK_AND_ASSIGN(const ModelWeights loaded, LoadWeights(model.config, dir));
  ExpectSameWeights(model, loaded);
}

TEST(LoadWeightsTest, OneErrorListsEveryProblem) {
  const Model model = testing::RandomModel(TinyConfig(), 23);
  std::map<std::string, Tensor> tensors = CheckpointTensors(model, Naming::kHub);
  tensors.erase("layers.1.attn.indexer.wq_b.weight");
  tensors.erase("layers.3.ffn.experts.4.w2.weight");
  tensors["layers.9.attn.wq_a.weight"] = Tensor::Zeros(DType::kF32, {2, 2});
  tensors["layers.0.attn.wkv.weight"] = Tensor::Zeros(DType::kF32, {3, 64});
  tensors["layers.2.ffn.gate.tid2eid"] = Tensor::Zeros(DType::kI64, {128, 2});
  const std::string dir = WriteCheckpoint(tensors, "broken");
  EXPECT_THAT(LoadWeights(model.config, dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("2 missing"), HasSubstr("layers.1.attn.indexer.wq_b.weight"),
                             HasSubstr("layers.3.ffn.experts.4.w2.weight"),
                             HasSubstr("2 unexpected"), HasSubstr("layers.9.attn.wq_a.weight"),
                             HasSubstr("layers.2.ffn.gate.tid2eid"),
                             HasSubstr("layers.0.attn.wkv.weight: shape mismatch"))));
}

TEST(LoadWeightsTest, RejectsOutOfRangeExpertTable) {
  const Model model = testing::RandomModel(TinyConfig(), 24);
  std::map<std::string, Tensor> tensors = CheckpointTensors(model, Naming::kHub);
  Tensor table = Tensor::Zeros(DType::kI64, {128, 2});
  table.data<int64_t>()[5] = 8;
  tensors["layers.0.ffn.gate.tid2eid"] = table;
  const std::string dir = WriteCheckpoint(tensors, "bad_table");
  EXPECT_THAT(LoadWeights(model.config, dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("layers.0.ffn.gate.tid2eid: entry 5 is expert 8")));
}

TEST(LoadWeightsTest, LoadsFp8Fp4FixtureWithMtp) {
  V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                            Model::Load(testing::FixtureDir("deepseek_fp8") + "/model"));
  ASSERT_EQ(model.weights.mtp.size(), 1u);
  EXPECT_EQ(model.weights.layers[1].ffn.w1.size(0), 8);
  EXPECT_EQ(model.weights.mtp[0].layer.attention_type, AttentionType::kSliding);
}

}  // namespace
}  // namespace v4rl::model
