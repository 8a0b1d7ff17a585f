#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <string_view>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/json.h"
#include "core/status.h"
#include "model/params.h"

namespace v4rl::model {
namespace {

using nlohmann::json;

// Typed access to one JSON object that records every problem instead of stopping at the first.
class FieldReader {
 public:
  FieldReader(const json& object, std::string what) : object_(object), what_(std::move(what)) {}

  bool Has(const char* key) const { return object_.contains(key) && !object_[key].is_null(); }

  int64_t Int(const char* key, int64_t fallback) {
    if (!Has(key)) return fallback;
    const json& v = object_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
        std::abs(v.get<double>()) < 9e15) {
      return static_cast<int64_t>(v.get<double>());
    }
    Error(absl::StrFormat("field '%s' is %s, expected an integer", key, v.dump()));
    return fallback;
  }
  double Number(const char* key, double fallback) {
    if (!Has(key)) return fallback;
    const json& v = object_[key];
    if (v.is_number()) return v.get<double>();
    Error(absl::StrFormat("field '%s' is %s, expected a number", key, v.dump()));
    return fallback;
  }
  bool Bool(const char* key, bool fallback) {
    if (!Has(key)) return fallback;
    const json& v = object_[key];
    if (v.is_boolean()) return v.get<bool>();
    Error(absl::StrFormat("field '%s' is %s, expected true or false", key, v.dump()));
    return fallback;
  }
  std::string String(const char* key, const std::string& fallback) {
    if (!Has(key)) return fallback;
    const json& v = object_[key];
    if (v.is_string()) return v.get<std::string>();
    Error(absl::StrFormat("field '%s' is %s, expected a string", key, v.dump()));
    return fallback;
  }
  // Required variants: a missing key is an error (DeepSeek's format has no safe defaults).
  int64_t RequiredInt(const char* key) {
    if (!Has(key)) Missing(key);
    return Int(key, 0);
  }
  double RequiredNumber(const char* key) {
    if (!Has(key)) Missing(key);
    return Number(key, 0.0);
  }
  const json* Object(const char* key) {
    if (!Has(key)) return nullptr;
    if (object_[key].is_object()) return &object_[key];
    Error(absl::StrFormat("field '%s' is %s, expected an object", key, object_[key].dump()));
    return nullptr;
  }
  const json* Array(const char* key) {
    if (!Has(key)) return nullptr;
    if (object_[key].is_array()) return &object_[key];
    Error(absl::StrFormat("field '%s' is %s, expected a list", key, object_[key].dump()));
    return nullptr;
  }

  void Missing(const char* key) { missing_.push_back(key); }
  void Error(std::string message) { errors_.push_back(std::move(message)); }

  absl::Status status() const {
    std::vector<std::string> all = errors_;
    if (!missing_.empty()) {
      all.push_back("missing required fields: " + absl::StrJoin(missing_, ", "));
    }
    if (all.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s", what_, absl::StrJoin(all, "; ")));
  }

 private:
  const json& object_;
  std::string what_;
  std::vector<std::string> errors_;
  std::vector<std::string> missing_;
};

// Per-layer compression ratio (0 / csa / other) -> attention type; records the HCA ratio.
void AttentionTypesFromRatios(const json& ratios, int64_t count, bool any_nonzero_is_hca,
                              ModelConfig& config, FieldReader& reader, const char* field,
                              std::vector<AttentionType>* types, AttentionType* mtp_type) {
  types->clear();
  int64_t hca_ratio = 0;
  for (size_t i = 0; i < ratios.size(); ++i) {
    if (!ratios[i].is_number_integer()) {
      reader.Error(absl::StrFormat("%s[%d] is %s, expected an integer", field, i,
                                   ratios[i].dump()));
      continue;
    }
    const int64_t r = ratios[i].get<int64_t>();
    AttentionType type;
    if (r == 0) {
      type = AttentionType::kSliding;
    } else if (r == 4) {
      type = AttentionType::kCompressedSparse;
    } else if (r == 128 || (any_nonzero_is_hca && r > 0)) {
      type = AttentionType::kHeavilyCompressed;
      if (hca_ratio != 0 && hca_ratio != r) {
        reader.Error(absl::StrFormat(
            "%s mixes heavily compressed ratios %d and %d; one ratio per model is supported",
            field, hca_ratio, r));
      }
      hca_ratio = r;
    } else {
      reader.Error(absl::StrFormat("%s[%d] is %d, expected 0, 4 or 128", field, i, r));
      continue;
    }
    if (static_cast<int64_t>(i) < count) {
      types->push_back(type);
    } else if (static_cast<int64_t>(i) == count) {
      *mtp_type = type;
    }
  }
  if (hca_ratio != 0) config.hca_compress_ratio = hca_ratio;
}

// transformers' int(head_dim * partial_rotary_factor); 0 (rejected by Validate) for head dims
// outside the range where the product is exact.
int64_t RopeDim(int64_t head_dim, double partial) {
  if (head_dim < 0 || head_dim > (int64_t{1} << 30)) return 0;
  return static_cast<int64_t>(head_dim * partial + 1e-9);
}

std::vector<AttentionType> DefaultHfLayerTypes(int64_t n) {
  // transformers' fallback when a config ships neither layer_types nor compress_ratios:
  // two HCA layers, then HCA/CSA alternating (spec §1.3 warns this is not the real Flash).
  std::vector<AttentionType> types;
  for (int64_t i = 0; i < n; ++i) {
    if (i < 2) {
      types.push_back(AttentionType::kHeavilyCompressed);
    } else {
      types.push_back((i - 2) % 2 ? AttentionType::kCompressedSparse
                                  : AttentionType::kHeavilyCompressed);
    }
  }
  return types;
}

std::vector<MlpType> HashSchedule(int64_t num_layers, int64_t num_hash) {
  std::vector<MlpType> types;
  for (int64_t i = 0; i < num_layers; ++i) {
    types.push_back(i < num_hash ? MlpType::kHashMoe : MlpType::kMoe);
  }
  return types;
}

// One `rope_parameters` entry (or the flat legacy `rope_scaling`) of the compressed layers.
void ParseCompressRope(const json& rope, FieldReader& reader, ModelConfig& config,
                       bool theta_from_entry) {
  FieldReader r(rope, "rope_parameters.compress");
  const std::string type = r.String("rope_type", r.String("type", "default"));
  if (theta_from_entry && r.Has("rope_theta")) {
    config.compress_rope_theta = r.Number("rope_theta", 0);
  }
  if (type == "yarn") {
    YarnConfig& yarn = config.compress_yarn;
    yarn.enabled = true;
    yarn.original_max_position_embeddings = r.Int("original_max_position_embeddings", 0);
    if (!r.Has("original_max_position_embeddings")) r.Missing("original_max_position_embeddings");
    yarn.factor = r.Has("factor") ? r.Number("factor", 1.0)
                  : yarn.original_max_position_embeddings > 0
                      ? static_cast<double>(config.max_position_embeddings) /
                            yarn.original_max_position_embeddings
                      : 0.0;
    // transformers treats 0 / null betas as the paper defaults.
    yarn.beta_fast = r.Number("beta_fast", 0) != 0 ? r.Number("beta_fast", 0) : 32.0;
    yarn.beta_slow = r.Number("beta_slow", 0) != 0 ? r.Number("beta_slow", 0) : 1.0;
    const double attention_factor = r.Number("attention_factor", 1.0);
    if (attention_factor != 1.0) {
      r.Error(absl::StrFormat("attention_factor is %g; V4 never scales cos/sin (expected 1.0)",
                              attention_factor));
    }
  } else if (type != "default") {
    r.Error(absl::StrFormat("rope_type '%s' is not supported (expected 'yarn' or 'default')",
                            type));
  }
  if (!r.status().ok()) reader.Error(std::string(r.status().message()));
}

absl::StatusOr<ModelConfig> ParseHfConfig(const json& j, const std::string& what) {
  FieldReader r(j, what);
  ModelConfig c;
  const std::string model_type = r.String("model_type", "deepseek_v4");
  if (model_type != "deepseek_v4") {
    r.Error(absl::StrFormat("model_type is '%s', expected 'deepseek_v4'", model_type));
  }
  const std::string act = r.String("hidden_act", "silu");
  if (act != "silu") r.Error(absl::StrFormat("hidden_act is '%s', expected 'silu'", act));
  // DeepseekV4Config defaults (V4-Flash values) for everything a saved config may omit.
  c.vocab_size = r.Int("vocab_size", 129280);
  c.hidden_size = r.Int("hidden_size", 4096);
  c.moe_intermediate_size = r.Int("moe_intermediate_size", 2048);
  c.num_layers = r.Int("num_hidden_layers", 43);
  c.num_heads = r.Int("num_attention_heads", 64);
  c.num_kv_heads = r.Int("num_key_value_heads", 1);
  c.head_dim = r.Int("head_dim", 512);
  c.q_lora_rank = r.Int("q_lora_rank", 1024);
  c.num_experts_per_tok = r.Int("num_experts_per_tok", 6);
  c.num_routed_experts = r.Int("n_routed_experts", 256);
  c.num_shared_experts = r.Int("n_shared_experts", 1);
  c.scoring_func = r.String("scoring_func", "sqrtsoftplus");
  c.routed_scaling_factor = r.Number("routed_scaling_factor", 1.5);
  c.max_position_embeddings = r.Int("max_position_embeddings", 1048576);
  c.rope_theta = r.Number("rope_theta", 10000.0);
  c.compress_rope_theta = r.Number("compress_rope_theta", 160000.0);
  c.hc_mult = r.Int("hc_mult", 4);
  c.hc_sinkhorn_iters = r.Int("hc_sinkhorn_iters", 20);
  c.hc_eps = r.Number("hc_eps", 1e-6);
  c.swiglu_limit = r.Number("swiglu_limit", 10.0);
  c.sliding_window = r.Int("sliding_window", 128);
  c.o_groups = r.Int("o_groups", 8);
  c.o_lora_rank = r.Int("o_lora_rank", 1024);
  c.index_n_heads = r.Int("index_n_heads", 64);
  c.index_head_dim = r.Int("index_head_dim", 128);
  c.index_topk = r.Int("index_topk", 512);
  c.num_mtp_layers = r.Int("num_nextn_predict_layers", 1);
  c.rms_norm_eps = r.Number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.Bool("tie_word_embeddings", false);

  if (c.num_layers > kMaxLayers || c.num_layers < 0) {
    r.Error(absl::StrFormat("num_hidden_layers (%d) must be in [0, %d]", c.num_layers,
                            kMaxLayers));
    return r.status();
  }
  // compress_rates, with the legacy scalar overrides folded in.
  if (const json* rates = r.Object("compress_rates")) {
    FieldReader rr(*rates, "compress_rates");
    c.csa_compress_ratio = rr.Int("compressed_sparse_attention", 4);
    c.hca_compress_ratio = rr.Int("heavily_compressed_attention", 128);
    if (!rr.status().ok()) r.Error(std::string(rr.status().message()));
  }
  c.csa_compress_ratio = r.Int("compress_rate_csa", c.csa_compress_ratio);
  c.hca_compress_ratio = r.Int("compress_rate_hca", c.hca_compress_ratio);

  // layer_types: explicit > legacy compress_ratios > transformers' default pattern.
  if (const json* types = r.Array("layer_types")) {
    for (size_t i = 0; i < types->size(); ++i) {
      const json& t = (*types)[i];
      const std::string name = t.is_string() ? t.get<std::string>() : t.dump();
      if (name == "sliding_attention") {
        c.layer_types.push_back(AttentionType::kSliding);
      } else if (name == "compressed_sparse_attention") {
        c.layer_types.push_back(AttentionType::kCompressedSparse);
      } else if (name == "heavily_compressed_attention") {
        c.layer_types.push_back(AttentionType::kHeavilyCompressed);
      } else {
        r.Error(absl::StrFormat("layer_types[%d] is %s, expected sliding_attention, "
                                "compressed_sparse_attention or heavily_compressed_attention",
                                i, t.dump()));
      }
    }
    if (c.num_layers >= 0 && static_cast<int64_t>(c.layer_types.size()) > c.num_layers) {
      c.layer_types.resize(c.num_layers);
    }
    if (const json* ratios = r.Array("compress_ratios")) {
      // The hub config's entry num_hidden_layers is the MTP block's ratio.
      if (static_cast<int64_t>(ratios->size()) > c.num_layers && (*ratios)[c.num_layers].is_number_integer()) {
        const int64_t mtp_ratio = (*ratios)[c.num_layers].get<int64_t>();
        c.mtp_layer_type = mtp_ratio == 0 ? AttentionType::kSliding
                           : mtp_ratio == 4 ? AttentionType::kCompressedSparse
                                            : AttentionType::kHeavilyCompressed;
      }
    }
  } else if (const json* ratios = r.Array("compress_ratios")) {
    AttentionTypesFromRatios(*ratios, c.num_layers, /*any_nonzero_is_hca=*/false, c, r,
                             "compress_ratios", &c.layer_types, &c.mtp_layer_type);
  } else {
    c.layer_types = DefaultHfLayerTypes(c.num_layers);
  }

  // mlp_layer_types: explicit > num_hash_layers (default 3).
  if (const json* types = r.Array("mlp_layer_types")) {
    for (size_t i = 0; i < types->size(); ++i) {
      const json& t = (*types)[i];
      if (t == "hash_moe") {
        c.mlp_layer_types.push_back(MlpType::kHashMoe);
      } else if (t == "moe") {
        c.mlp_layer_types.push_back(MlpType::kMoe);
      } else {
        r.Error(absl::StrFormat("mlp_layer_types[%d] is %s, expected hash_moe or moe", i,
                                t.dump()));
      }
    }
    if (c.num_layers >= 0 && static_cast<int64_t>(c.mlp_layer_types.size()) > c.num_layers) {
      c.mlp_layer_types.resize(c.num_layers);
    }
  } else {
    c.mlp_layer_types = HashSchedule(c.num_layers, r.Int("num_hash_layers", 3));
  }

  // Rotary dims: partial_rotary_factor > legacy qk_rope_head_dim > 64 / 512.
  double partial = 64.0 / 512.0;
  if (r.Has("partial_rotary_factor")) {
    partial = r.Number("partial_rotary_factor", partial);
  } else if (r.Has("qk_rope_head_dim") && c.head_dim > 0) {
    partial = static_cast<double>(r.Int("qk_rope_head_dim", 64)) / c.head_dim;
  }
  if (!(partial > 0.0 && partial <= 1.0)) {
    r.Error(absl::StrFormat("partial_rotary_factor (%g, or qk_rope_head_dim / head_dim) must be "
                            "in (0, 1]",
                            partial));
    partial = 64.0 / 512.0;
  }
  c.rope_head_dim = RopeDim(c.head_dim, partial);

  // RoPE: nested {main, compress} as transformers writes it, or the flat legacy form.
  const json* rope = r.Object("rope_parameters");
  if (rope == nullptr) rope = r.Object("rope_scaling");
  if (rope != nullptr && rope->contains("main") && rope->contains("compress")) {
    const json& main = (*rope)["main"];
    const json& compress = (*rope)["compress"];
    if (!main.is_object() || !compress.is_object()) {
      r.Error("rope_parameters.main and .compress must be objects");
    } else {
      FieldReader mr(main, "rope_parameters.main");
      const std::string main_type = mr.String("rope_type", mr.String("type", "default"));
      if (main_type != "default") {
        mr.Error(absl::StrFormat("rope_type is '%s'; sliding layers use plain RoPE ('default')",
                                 main_type));
      }
      c.rope_theta = mr.Number("rope_theta", c.rope_theta);
      for (const json* entry : {&main, &compress}) {
        const json* factor =
            entry->contains("partial_rotary_factor") ? &(*entry)["partial_rotary_factor"] : nullptr;
        if (factor != nullptr && factor->is_number() &&
            (!(factor->get<double>() > 0.0 && factor->get<double>() <= 1.0) ||
             RopeDim(c.head_dim, factor->get<double>()) != c.rope_head_dim)) {
          r.Error(absl::StrFormat(
              "rope_parameters partial_rotary_factor %s disagrees with rope dim %d",
              (*entry)["partial_rotary_factor"].dump(), c.rope_head_dim));
        }
      }
      if (!mr.status().ok()) r.Error(std::string(mr.status().message()));
      ParseCompressRope(compress, r, c, /*theta_from_entry=*/true);
    }
  } else if (rope != nullptr) {
    ParseCompressRope(*rope, r, c, /*theta_from_entry=*/false);
  }

  V4RL_RETURN_IF_ERROR(r.status());
  V4RL_RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<ModelConfig> ParseDeepSeekConfig(const json& j, const std::string& what) {
  FieldReader r(j, what);
  ModelConfig c;
  c.vocab_size = r.RequiredInt("vocab_size");
  c.hidden_size = r.RequiredInt("dim");
  c.moe_intermediate_size = r.RequiredInt("moe_inter_dim");
  c.num_layers = r.RequiredInt("n_layers");
  c.num_heads = r.RequiredInt("n_heads");
  c.num_routed_experts = r.RequiredInt("n_routed_experts");
  c.num_shared_experts = r.RequiredInt("n_shared_experts");
  c.num_experts_per_tok = r.RequiredInt("n_activated_experts");
  c.routed_scaling_factor = r.RequiredNumber("route_scale");
  c.swiglu_limit = r.RequiredNumber("swiglu_limit");
  c.q_lora_rank = r.RequiredInt("q_lora_rank");
  c.head_dim = r.RequiredInt("head_dim");
  c.rope_head_dim = r.RequiredInt("rope_head_dim");
  c.o_groups = r.RequiredInt("o_groups");
  c.o_lora_rank = r.RequiredInt("o_lora_rank");
  c.sliding_window = r.RequiredInt("window_size");
  c.rope_theta = r.RequiredNumber("rope_theta");
  c.compress_rope_theta = r.RequiredNumber("compress_rope_theta");
  c.index_n_heads = r.RequiredInt("index_n_heads");
  c.index_head_dim = r.RequiredInt("index_head_dim");
  c.index_topk = r.RequiredInt("index_topk");
  c.hc_mult = r.RequiredInt("hc_mult");
  c.hc_sinkhorn_iters = r.RequiredInt("hc_sinkhorn_iters");
  if (!r.Has("score_func")) r.Missing("score_func");
  c.scoring_func = r.String("score_func", "");
  // Documented defaults of the official ModelArgs that real configs omit (spec §1.2).
  c.rms_norm_eps = r.Number("norm_eps", 1e-6);
  c.hc_eps = r.Number("hc_eps", 1e-6);
  c.num_mtp_layers = r.Int("n_mtp_layers", 1);
  if (c.num_layers > kMaxLayers || c.num_layers < 0) {
    r.Error(absl::StrFormat("n_layers (%d) must be in [0, %d]", c.num_layers, kMaxLayers));
    return r.status();
  }
  c.mlp_layer_types = HashSchedule(c.num_layers, r.RequiredInt("n_hash_layers"));

  // YaRN on compressed layers when original_seq_len > 0 (official Attention).
  const int64_t original = r.RequiredInt("original_seq_len");
  const double factor = r.RequiredNumber("rope_factor");
  c.compress_yarn.enabled = original > 0;
  c.compress_yarn.factor = factor;
  c.compress_yarn.original_max_position_embeddings = original;
  c.compress_yarn.beta_fast = r.RequiredNumber("beta_fast");
  c.compress_yarn.beta_slow = r.RequiredNumber("beta_slow");
  if (!(factor > 0.0 && factor <= 1e6) || original < 0 || original > (int64_t{1} << 40)) {
    r.Error(absl::StrFormat("rope_factor (%g) must be in (0, 1e6] and original_seq_len (%d) in "
                            "[0, 2^40]",
                            factor, original));
  } else {
    c.max_position_embeddings = static_cast<int64_t>(original * factor);
  }

  if (const json* ratios = r.Array("compress_ratios")) {
    AttentionTypesFromRatios(*ratios, c.num_layers, /*any_nonzero_is_hca=*/true, c, r,
                             "compress_ratios", &c.layer_types, &c.mtp_layer_type);
  } else {
    r.Missing("compress_ratios");
  }
  V4RL_RETURN_IF_ERROR(r.status());
  V4RL_RETURN_IF_ERROR(c.Validate());
  return c;
}

void AddIfNot(std::vector<std::string>& errors, bool ok, std::string message) {
  if (!ok) errors.push_back(std::move(message));
}

}  // namespace

const char* AttentionTypeName(AttentionType type) {
  switch (type) {
    case AttentionType::kSliding:
      return "sliding_attention";
    case AttentionType::kCompressedSparse:
      return "compressed_sparse_attention";
    case AttentionType::kHeavilyCompressed:
      return "heavily_compressed_attention";
  }
  return "?";
}

const char* MlpTypeName(MlpType type) { return type == MlpType::kHashMoe ? "hash_moe" : "moe"; }

int64_t ModelConfig::CompressRatio(AttentionType type) const {
  switch (type) {
    case AttentionType::kSliding:
      return 0;
    case AttentionType::kCompressedSparse:
      return csa_compress_ratio;
    case AttentionType::kHeavilyCompressed:
      return hca_compress_ratio;
  }
  return 0;
}

int64_t ModelConfig::num_hash_layers() const {
  int64_t count = 0;
  for (MlpType t : mlp_layer_types) count += t == MlpType::kHashMoe;
  return count;
}

absl::Status ModelConfig::Validate() const {
  std::vector<std::string> e;
  auto positive = [&](const char* name, int64_t value) {
    AddIfNot(e, value > 0, absl::StrFormat("%s (%d) must be > 0", name, value));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_layers);
  positive("num_attention_heads", num_heads);
  positive("head_dim", head_dim);
  positive("q_lora_rank", q_lora_rank);
  positive("o_groups", o_groups);
  positive("o_lora_rank", o_lora_rank);
  positive("sliding_window", sliding_window);
  positive("hc_mult", hc_mult);
  positive("hc_sinkhorn_iters", hc_sinkhorn_iters);
  positive("n_routed_experts", num_routed_experts);
  positive("num_experts_per_tok", num_experts_per_tok);
  positive("moe_intermediate_size", moe_intermediate_size);
  // Bounds that keep a hostile config from asking for absurd allocations or loops.
  auto at_most = [&](const char* name, int64_t value, int64_t limit) {
    AddIfNot(e, value <= limit, absl::StrFormat("%s (%d) must be <= %d", name, value, limit));
  };
  at_most("num_hidden_layers", num_layers, kMaxLayers);
  for (const auto& [name, value] :
       {std::pair{"hidden_size", hidden_size}, std::pair{"head_dim", head_dim},
        std::pair{"q_lora_rank", q_lora_rank}, std::pair{"o_lora_rank", o_lora_rank},
        std::pair{"moe_intermediate_size", moe_intermediate_size},
        std::pair{"index_head_dim", index_head_dim}}) {
    at_most(name, value, int64_t{1} << 20);
  }
  at_most("num_attention_heads", num_heads, 4096);
  at_most("index_n_heads", index_n_heads, 4096);
  at_most("n_routed_experts", num_routed_experts, 65536);
  at_most("n_shared_experts", num_shared_experts, 64);
  at_most("hc_mult", hc_mult, 64);
  at_most("hc_sinkhorn_iters", hc_sinkhorn_iters, 10000);
  at_most("num_nextn_predict_layers", num_mtp_layers, 16);
  at_most("compress_rates.compressed_sparse_attention", csa_compress_ratio, int64_t{1} << 20);
  at_most("compress_rates.heavily_compressed_attention", hca_compress_ratio, int64_t{1} << 20);
  AddIfNot(e, vocab_size <= (int64_t{1} << 31) - 1,
           absl::StrFormat("vocab_size (%d) must fit int32 token ids", vocab_size));
  AddIfNot(e, num_kv_heads == 1,
           absl::StrFormat("num_key_value_heads (%d) must be 1 (one shared K=V head)",
                           num_kv_heads));
  AddIfNot(e, rope_head_dim > 0 && rope_head_dim % 2 == 0 && rope_head_dim <= head_dim,
           absl::StrFormat("rope dim (%d, from partial_rotary_factor / qk_rope_head_dim) must "
                           "be even and in (0, head_dim = %d]",
                           rope_head_dim, head_dim));
  AddIfNot(e, o_groups <= 0 || num_heads % o_groups == 0,
           absl::StrFormat("num_attention_heads (%d) must be divisible by o_groups (%d)",
                           num_heads, o_groups));
  AddIfNot(e, static_cast<int64_t>(layer_types.size()) == num_layers,
           absl::StrFormat("layer_types has %d entries, expected num_hidden_layers = %d",
                           layer_types.size(), num_layers));
  AddIfNot(e, static_cast<int64_t>(mlp_layer_types.size()) == num_layers,
           absl::StrFormat("mlp_layer_types has %d entries, expected num_hidden_layers = %d",
                           mlp_layer_types.size(), num_layers));
  AddIfNot(e, num_experts_per_tok <= num_routed_experts,
           absl::StrFormat("num_experts_per_tok (%d) must be <= n_routed_experts (%d)",
                           num_experts_per_tok, num_routed_experts));
  AddIfNot(e, num_shared_experts >= 0,
           absl::StrFormat("n_shared_experts (%d) must be >= 0", num_shared_experts));
  AddIfNot(e, num_mtp_layers >= 0,
           absl::StrFormat("num_nextn_predict_layers (%d) must be >= 0", num_mtp_layers));
  AddIfNot(e, scoring_func == "sqrtsoftplus",
           absl::StrFormat("scoring_func '%s' is not supported (expected sqrtsoftplus)",
                           scoring_func));
  AddIfNot(e, rms_norm_eps > 0, absl::StrFormat("rms_norm_eps (%g) must be > 0", rms_norm_eps));
  AddIfNot(e, hc_eps >= 0, absl::StrFormat("hc_eps (%g) must be >= 0", hc_eps));
  AddIfNot(e, rope_theta > 0, absl::StrFormat("rope_theta (%g) must be > 0", rope_theta));
  bool has_csa = mtp_layer_type == AttentionType::kCompressedSparse && num_mtp_layers > 0;
  bool has_hca = mtp_layer_type == AttentionType::kHeavilyCompressed && num_mtp_layers > 0;
  for (AttentionType t : layer_types) {
    has_csa |= t == AttentionType::kCompressedSparse;
    has_hca |= t == AttentionType::kHeavilyCompressed;
  }
  if (has_csa || has_hca) {
    AddIfNot(e, compress_rope_theta > 0,
             absl::StrFormat("compress_rope_theta (%g) must be > 0", compress_rope_theta));
    if (compress_yarn.enabled) {
      AddIfNot(e, compress_yarn.factor > 0,
               absl::StrFormat("YaRN factor (%g) must be > 0", compress_yarn.factor));
      AddIfNot(e, compress_yarn.original_max_position_embeddings > 0,
               absl::StrFormat("YaRN original_max_position_embeddings (%d) must be > 0",
                               compress_yarn.original_max_position_embeddings));
    }
  }
  if (has_csa) {
    positive("compress_rates.compressed_sparse_attention", csa_compress_ratio);
    positive("index_n_heads", index_n_heads);
    positive("index_topk", index_topk);
    AddIfNot(e, index_head_dim >= rope_head_dim && index_head_dim % 2 == 0,
             absl::StrFormat("index_head_dim (%d) must be even and >= the rope dim (%d)",
                             index_head_dim, rope_head_dim));
  }
  if (has_hca) positive("compress_rates.heavily_compressed_attention", hca_compress_ratio);
  if (e.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError("invalid model config: " + absl::StrJoin(e, "; "));
}

absl::StatusOr<ModelConfig> ParseModelConfig(const json& json, const std::string& what) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(what + ": expected a JSON object");
  }
  if (json.contains("dim") && !json.contains("hidden_size")) {
    return ParseDeepSeekConfig(json, what);
  }
  return ParseHfConfig(json, what);
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "config.json");
  V4RL_ASSIGN_OR_RETURN(nlohmann::json json, core::ReadJsonFile(file));
  return ParseModelConfig(json, file);
}

namespace {

ModelConfig HubCommon() {
  ModelConfig c;
  c.vocab_size = 129280;
  c.num_kv_heads = 1;
  c.head_dim = 512;
  c.rope_head_dim = 64;
  c.o_lora_rank = 1024;
  c.sliding_window = 128;
  c.csa_compress_ratio = 4;
  c.hca_compress_ratio = 128;
  c.rope_theta = 10000.0;
  c.compress_rope_theta = 160000.0;
  c.compress_yarn = {true, 16.0, 65536, 32.0, 1.0};
  c.max_position_embeddings = 1048576;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.hc_mult = 4;
  c.hc_sinkhorn_iters = 20;
  c.hc_eps = 1e-6;
  c.rms_norm_eps = 1e-6;
  c.num_shared_experts = 1;
  c.num_experts_per_tok = 6;
  c.swiglu_limit = 10.0;
  c.num_mtp_layers = 1;
  c.mtp_layer_type = AttentionType::kSliding;
  return c;
}

}  // namespace

ModelConfig FlashConfig() {
  ModelConfig c = HubCommon();
  c.hidden_size = 4096;
  c.num_layers = 43;
  c.num_heads = 64;
  c.q_lora_rank = 1024;
  c.o_groups = 8;
  c.index_topk = 512;
  c.num_routed_experts = 256;
  c.moe_intermediate_size = 2048;
  c.routed_scaling_factor = 1.5;
  // compress_ratios [0, 0] + [4, 128] x 20 + [4] (+ 0 for MTP).
  for (int64_t i = 0; i < c.num_layers; ++i) {
    c.layer_types.push_back(i < 2        ? AttentionType::kSliding
                            : i % 2 == 0 ? AttentionType::kCompressedSparse
                                         : AttentionType::kHeavilyCompressed);
  }
  c.mlp_layer_types = HashSchedule(c.num_layers, 3);
  return c;
}

ModelConfig ProConfig() {
  ModelConfig c = HubCommon();
  c.hidden_size = 7168;
  c.num_layers = 61;
  c.num_heads = 128;
  c.q_lora_rank = 1536;
  c.o_groups = 16;
  c.index_topk = 1024;
  c.num_routed_experts = 384;
  c.moe_intermediate_size = 3072;
  c.routed_scaling_factor = 2.5;
  // compress_ratios [128, 128] + [4, 128] x 29 + [4] (+ 0 for MTP).
  for (int64_t i = 0; i < c.num_layers; ++i) {
    c.layer_types.push_back(i >= 2 && i % 2 == 0 ? AttentionType::kCompressedSparse
                                                 : AttentionType::kHeavilyCompressed);
  }
  c.mlp_layer_types = HashSchedule(c.num_layers, 3);
  return c;
}

ModelConfig TinyConfig() {
  ModelConfig c;
  c.vocab_size = 128;
  c.hidden_size = 64;
  c.num_layers = 4;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 32;
  c.rope_head_dim = 16;
  c.q_lora_rank = 32;
  c.o_groups = 2;
  c.o_lora_rank = 16;
  c.sliding_window = 8;
  c.csa_compress_ratio = 4;
  c.hca_compress_ratio = 8;
  c.layer_types = {AttentionType::kSliding, AttentionType::kCompressedSparse,
                   AttentionType::kHeavilyCompressed, AttentionType::kCompressedSparse};
  c.mlp_layer_types = HashSchedule(c.num_layers, 1);
  c.rope_theta = 10000.0;
  c.compress_rope_theta = 160000.0;
  c.compress_yarn = {true, 16.0, 65536, 32.0, 1.0};
  c.max_position_embeddings = 1048576;
  c.index_n_heads = 2;
  c.index_head_dim = 32;
  c.index_topk = 3;
  c.num_routed_experts = 8;
  c.num_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 16;
  c.routed_scaling_factor = 1.5;
  c.num_mtp_layers = 1;
  return c;
}

ParameterCount CountParameters(const ModelConfig& config) {
  ParameterCount count;
  int64_t routed_per_layer = 0;
  for (const ParamSpec& spec : ModelParamSpecs(config, /*include_mtp=*/true)) {
    if (spec.is_index_table) continue;
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    if (spec.name.rfind("mtp.", 0) == 0) {
      count.mtp += numel;
    } else {
      count.main += numel;
      if (spec.is_routed_experts) routed_per_layer += numel;
    }
  }
  // Routed experts of all main layers, of which each token uses k of E.
  const double unused = 1.0 - static_cast<double>(config.num_experts_per_tok) /
                                  static_cast<double>(config.num_routed_experts);
  count.active = count.main - static_cast<int64_t>(routed_per_layer * unused);
  return count;
}

}  // namespace v4rl::model
