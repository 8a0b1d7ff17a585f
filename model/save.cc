#include "model/save.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file.h"
#include "core/status.h"
#include "model/params.h"

namespace v4rl::model {

nlohmann::json ModelConfigToJson(const ModelConfig& c) {
  nlohmann::json layer_types = nlohmann::json::array(), mlp_types = nlohmann::json::array();
  for (AttentionType type : c.layer_types) layer_types.push_back(AttentionTypeName(type));
  for (MlpType type : c.mlp_layer_types) mlp_types.push_back(MlpTypeName(type));
  const double partial = static_cast<double>(c.rope_head_dim) / c.head_dim;
  nlohmann::json compress_rope = {{"rope_type", c.compress_yarn.enabled ? "yarn" : "default"},
                                  {"rope_theta", c.compress_rope_theta},
                                  {"partial_rotary_factor", partial}};
  if (c.compress_yarn.enabled) {
    compress_rope["factor"] = c.compress_yarn.factor;
    compress_rope["original_max_position_embeddings"] =
        c.compress_yarn.original_max_position_embeddings;
    compress_rope["beta_fast"] = c.compress_yarn.beta_fast;
    compress_rope["beta_slow"] = c.compress_yarn.beta_slow;
    compress_rope["attention_factor"] = 1.0;
  }
  return {
      {"architectures", {"DeepseekV4ForCausalLM"}},
      {"model_type", "deepseek_v4"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"qk_rope_head_dim", c.rope_head_dim},
      {"partial_rotary_factor", partial},
      {"q_lora_rank", c.q_lora_rank},
      {"o_groups", c.o_groups},
      {"o_lora_rank", c.o_lora_rank},
      {"sliding_window", c.sliding_window},
      {"compress_rates",
       {{"compressed_sparse_attention", c.csa_compress_ratio},
        {"heavily_compressed_attention", c.hca_compress_ratio}}},
      {"layer_types", layer_types},
      {"mlp_layer_types", mlp_types},
      {"rope_theta", c.rope_theta},
      {"compress_rope_theta", c.compress_rope_theta},
      {"rope_parameters",
       {{"main", {{"rope_type", "default"}, {"rope_theta", c.rope_theta},
                  {"partial_rotary_factor", partial}}},
        {"compress", compress_rope}}},
      {"max_position_embeddings", c.max_position_embeddings},
      {"index_n_heads", c.index_n_heads},
      {"index_head_dim", c.index_head_dim},
      {"index_topk", c.index_topk},
      {"hc_mult", c.hc_mult},
      {"hc_sinkhorn_iters", c.hc_sinkhorn_iters},
      {"hc_eps", c.hc_eps},
      {"rms_norm_eps", c.rms_norm_eps},
      {"n_routed_experts", c.num_routed_experts},
      {"n_shared_experts", c.num_shared_experts},
      {"num_experts_per_tok", c.num_experts_per_tok},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"routed_scaling_factor", c.routed_scaling_factor},
      {"swiglu_limit", c.swiglu_limit},
      {"scoring_func", c.scoring_func},
      {"norm_topk_prob", true},
      {"num_nextn_predict_layers", c.num_mtp_layers},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"hidden_act", "silu"},
      {"bos_token_id", 0},
      {"eos_token_id", 1},
      {"torch_dtype", "float32"},
  };
}

std::vector<core::NamedTensor> HubNamedTensors(const ModelConfig& config,
                                               const ModelWeights& weights,
                                               std::vector<core::Tensor>* storage) {
  std::vector<core::NamedTensor> tensors;
  const bool include_mtp = !weights.mtp.empty();
  VisitParams(config, const_cast<ModelWeights*>(&weights), include_mtp,
              [&](const ParamSpec& spec, core::Tensor* slot) {
                if (slot == nullptr || !slot->defined()) return;
                if (config.tie_word_embeddings && spec.name == "head.weight") return;
                if (!spec.is_routed_experts) {
                  tensors.push_back({spec.name, slot->view()});
                  return;
                }
                // "...experts.w1.weight" [E, ...] -> "...experts.<e>.w1.weight" per expert.
                const size_t split = spec.name.rfind("experts.") + 7;
                const std::string prefix = spec.name.substr(0, split);  // "...experts"
                const std::string suffix = spec.name.substr(split);     // ".w1.weight"
                for (int64_t e = 0; e < slot->size(0); ++e) {
                  storage->push_back(core::Tensor::CopyOf(slot->view().Select(0, e)));
                  tensors.push_back({absl::StrCat(prefix, ".", e, suffix), storage->back().view()});
                }
              });
  return tensors;
}

absl::Status SaveModel(const std::string& directory, const ModelConfig& config,
                       const ModelWeights& weights) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) {
    return absl::PermissionDeniedError(
        absl::StrFormat("cannot create %s: %s", directory, error.message()));
  }
  V4RL_RETURN_IF_ERROR(
      core::WriteFileAtomic(directory + "/config.json", ModelConfigToJson(config).dump(2) + "\n"));
  std::vector<core::Tensor> storage;
  const std::vector<core::NamedTensor> tensors = HubNamedTensors(config, weights, &storage);
  return core::WriteSafetensors(directory + "/model.safetensors", tensors, {{"format", "pt"}});
}

}  // namespace v4rl::model
