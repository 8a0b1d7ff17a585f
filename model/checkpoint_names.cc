#include "model/checkpoint_names.h"

#include <cctype>
#include <string_view>
#include <utility>

namespace v4rl::model {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// transformers module names inside one layer -> hub names (spec §6.5, inverted).
constexpr std::pair<std::string_view, std::string_view> kLayerRenames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"attn_hc.fn", "hc_attn_fn"},
    {"attn_hc.base", "hc_attn_base"},
    {"attn_hc.scale", "hc_attn_scale"},
    {"ffn_hc.fn", "hc_ffn_fn"},
    {"ffn_hc.base", "hc_ffn_base"},
    {"ffn_hc.scale", "hc_ffn_scale"},
    {"hc_head.hc_fn", "hc_head_fn"},
    {"hc_head.hc_base", "hc_head_base"},
    {"hc_head.hc_scale", "hc_head_scale"},
    {"self_attn.q_a_proj.weight", "attn.wq_a.weight"},
    {"self_attn.q_a_norm.weight", "attn.q_norm.weight"},
    {"self_attn.q_b_proj.weight", "attn.wq_b.weight"},
    {"self_attn.kv_proj.weight", "attn.wkv.weight"},
    {"self_attn.kv_norm.weight", "attn.kv_norm.weight"},
    {"self_attn.o_a_proj.weight", "attn.wo_a.weight"},
    {"self_attn.o_b_proj.weight", "attn.wo_b.weight"},
    {"self_attn.sinks", "attn.attn_sink"},
    {"self_attn.compressor.kv_proj.weight", "attn.compressor.wkv.weight"},
    {"self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight"},
    {"self_attn.compressor.position_bias", "attn.compressor.ape"},
    {"self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight"},
    {"self_attn.compressor.indexer.kv_proj.weight", "attn.indexer.compressor.wkv.weight"},
    {"self_attn.compressor.indexer.gate_proj.weight", "attn.indexer.compressor.wgate.weight"},
    {"self_attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape"},
    {"self_attn.compressor.indexer.kv_norm.weight", "attn.indexer.compressor.norm.weight"},
    {"self_attn.compressor.indexer.q_b_proj.weight", "attn.indexer.wq_b.weight"},
    {"self_attn.compressor.indexer.scorer.weights_proj.weight", "attn.indexer.weights_proj.weight"},
    {"self_attn.compressor.indexer.weights_proj.weight", "attn.indexer.weights_proj.weight"},
    {"mlp.gate.weight", "ffn.gate.weight"},
    {"mlp.gate.e_score_correction_bias", "ffn.gate.bias"},
    {"mlp.gate.tid2eid", "ffn.gate.tid2eid"},
    {"mlp.experts.gate_up_proj", "ffn.experts.gate_up_proj"},
    {"mlp.experts.down_proj", "ffn.experts.down_proj"},
    {"mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight"},
    {"mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight"},
    {"mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight"},
    // transformers 5.17 save_pretrained writes the attention kv_norm as "attn.norm".
    {"attn.norm.weight", "attn.kv_norm.weight"},
};

constexpr std::pair<std::string_view, std::string_view> kTopRenames[] = {
    {"embed_tokens.weight", "embed.weight"},
    {"lm_head.weight", "head.weight"},
    {"hc_head.hc_fn", "hc_head_fn"},
    {"hc_head.hc_base", "hc_head_base"},
    {"hc_head.hc_scale", "hc_head_scale"},
};

// Length of a "layers.<i>." or "mtp.<i>." prefix, or 0.
size_t LayerPrefixLength(std::string_view key) {
  for (std::string_view head : {std::string_view("layers."), std::string_view("mtp.")}) {
    if (!StartsWith(key, head)) continue;
    size_t i = head.size();
    const size_t digits_begin = i;
    while (i < key.size() && std::isdigit(static_cast<unsigned char>(key[i]))) ++i;
    if (i > digits_begin && i < key.size() && key[i] == '.') return i + 1;
  }
  return 0;
}

std::string CanonicalWeightName(std::string_view key) {
  if (StartsWith(key, "model.")) key.remove_prefix(6);
  const size_t prefix = LayerPrefixLength(key);
  if (prefix == 0) {
    for (const auto& [from, to] : kTopRenames) {
      if (key == from) return std::string(to);
    }
    return std::string(key);
  }
  const std::string_view rest = key.substr(prefix);
  for (const auto& [from, to] : kLayerRenames) {
    if (rest == from) return std::string(key.substr(0, prefix)) + std::string(to);
  }
  return std::string(key);
}

}  // namespace

std::string ScaleName(const std::string& canonical_weight_name) {
  std::string_view base = canonical_weight_name;
  if (EndsWith(base, ".weight")) base.remove_suffix(7);
  return std::string(base) + ".scale";
}

std::string CanonicalTensorName(const std::string& key) {
  // transformers' FP8 companions: "<weight name>_scale_inv".
  if (EndsWith(key, "_scale_inv")) {
    return ScaleName(CanonicalWeightName(std::string_view(key).substr(0, key.size() - 10)));
  }
  return CanonicalWeightName(key);
}

}  // namespace v4rl::model
