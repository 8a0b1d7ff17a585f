// ModelConfig: the architecture hyper-parameters of a DeepSeek-V4 model (spec §1), read from a
// Hugging Face `config.json` (transformers' DeepseekV4Config, including the hub config's legacy
// keys) or from DeepSeek's inference `config.json` (`dim`, `n_layers`, ...), plus the `flash` and
// `pro` presets and tiny test configs.
//
// Field names follow transformers where one exists. Every count is a plain integer; the per-layer
// schedule is explicit (layer_types / mlp_layer_types), never re-derived from defaults at use
// sites. Validate() reports every inconsistency in one Status.
// Thread-safety: a ModelConfig is a value; all functions are pure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace v4rl::model {

// Attention block kind of a layer (spec §3): sliding window only, compressed sparse attention
// (overlapping compressor + lightning indexer + top-k), heavily compressed attention.
enum class AttentionType : uint8_t { kSliding, kCompressedSparse, kHeavilyCompressed };
// MoE routing of a layer: fixed tid2eid table (hash) or learned top-k with a selection bias.
enum class MlpType : uint8_t { kHashMoe, kMoe };

// transformers' spellings: "sliding_attention", "compressed_sparse_attention", ...
const char* AttentionTypeName(AttentionType type);
const char* MlpTypeName(MlpType type);

// YaRN frequency interpolation of the compressed layers' RoPE (spec §3.2). The cos/sin are never
// scaled (attention_factor 1), so only the frequency table changes.
struct YarnConfig {
  bool enabled = false;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

// Largest accepted num_hidden_layers (the hub models have 43 and 61).
inline constexpr int64_t kMaxLayers = 4096;

struct ModelConfig {
  int64_t vocab_size = 0;            // V
  int64_t hidden_size = 0;           // H
  int64_t num_layers = 0;            // main decoder blocks; MTP blocks not counted
  int64_t num_heads = 0;             // nh query heads
  int64_t num_kv_heads = 1;          // V4 has one shared K=V head
  int64_t head_dim = 0;              // D
  int64_t rope_head_dim = 0;         // rd: RoPE on the trailing rd channels of every head
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;              // G
  int64_t o_lora_rank = 0;
  int64_t sliding_window = 0;        // raw-KV window, the query included
  int64_t csa_compress_ratio = 4;    // m of compressed sparse attention
  int64_t hca_compress_ratio = 128;  // m of heavily compressed attention
  std::vector<AttentionType> layer_types;  // [num_layers]
  std::vector<MlpType> mlp_layer_types;    // [num_layers]

  double rope_theta = 10000.0;            // sliding-only layers (no YaRN)
  double compress_rope_theta = 160000.0;  // CSA/HCA layers, every rotation in them
  YarnConfig compress_yarn;
  int64_t max_position_embeddings = 0;

  int64_t index_n_heads = 0;
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;

  int64_t hc_mult = 4;  // n residual streams
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;

  int64_t num_routed_experts = 0;  // E
  int64_t num_shared_experts = 1;
  int64_t num_experts_per_tok = 0;     // k
  int64_t moe_intermediate_size = 0;   // I, routed and shared expert width
  double routed_scaling_factor = 1.0;
  double swiglu_limit = 10.0;          // <= 0 disables the clamp
  std::string scoring_func = "sqrtsoftplus";

  int64_t num_mtp_layers = 1;  // num_nextn_predict_layers
  AttentionType mtp_layer_type = AttentionType::kSliding;
  bool tie_word_embeddings = false;

  // Compression ratio of a layer type (0 for sliding).
  int64_t CompressRatio(AttentionType type) const;
  int64_t num_hash_layers() const;

  // InvalidArgument listing every problem ("field (value): expectation; ..."), or OK.
  absl::Status Validate() const;
};

// Parses either format: DeepSeek's inference config when it has "dim" and no "hidden_size",
// otherwise transformers' (missing fields take DeepseekV4Config's defaults, which are V4-Flash's).
// DeepSeek's format has no trustworthy defaults (spec pitfall 16): its missing required keys are
// errors, all named at once. The result is validated. `what` names the input in messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json, const std::string& what);
// Reads `path` (a config.json, or a directory holding one) and parses it.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// The hub configs of spec §1.
ModelConfig FlashConfig();
ModelConfig ProConfig();
// A tiny config for unit tests (H = 64, 4 layers: sliding, CSA, HCA, CSA; hash layer 0; 8
// experts; window 8; ratios 4 and 8; YaRN on the compressed layers).
ModelConfig TinyConfig();

struct ParameterCount {
  int64_t main = 0;    // every float parameter outside MTP, embedding and head included
  int64_t mtp = 0;     // the MTP blocks (their embedding and head are shared)
  int64_t active = 0;  // per token: main minus the routed experts a token does not use
};
// Computed from the shapes of ModelParamSpecs; allocates nothing (tid2eid tables excluded).
ParameterCount CountParameters(const ModelConfig& config);

}  // namespace v4rl::model
