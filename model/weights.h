// ModelWeights: every parameter of a V4 model as fp32 CPU tensors (reference precision), one
// struct per module (llm.c's ParameterTensors, split by module), and the loader that fills them
// from a model directory in any supported key naming and number format.
//
// Shapes below use the spec's letters (H hidden, n hc_mult, nh heads, D head_dim, G o_groups,
// E experts, I expert width, m compression ratio, d compressed entry width, V vocab). Tensors of
// modules a layer does not have (a sliding layer's compressor, a hash layer's bias) stay
// undefined. The structs own their tensors; copying shares the buffers.
// Thread-safety: immutable after loading; concurrent forwards may read them.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "model/config.h"

namespace v4rl::model {

struct MhcWeights {
  core::Tensor fn;     // [(2+n)·n, n·H]
  core::Tensor base;   // [(2+n)·n]
  core::Tensor scale;  // [3]: alpha_pre, alpha_post, alpha_res
};

struct HcHeadWeights {
  core::Tensor fn;     // [n, n·H]
  core::Tensor base;   // [n]
  core::Tensor scale;  // [1]
};

// Compressor of a CSA (overlap: c = 2) or HCA (c = 1) layer, or of the lightning indexer (d =
// index_head_dim, c = 2).
struct CompressorWeights {
  core::Tensor wkv;    // [c·d, H]
  core::Tensor wgate;  // [c·d, H]
  core::Tensor ape;    // [m, c·d] positional bias of the gate scores
  core::Tensor norm;   // [d]
};

struct IndexerWeights {
  core::Tensor wq_b;          // [index_n_heads · index_head_dim, q_lora_rank]
  core::Tensor weights_proj;  // [index_n_heads, H]
  CompressorWeights compressor;
};

struct AttentionWeights {
  core::Tensor wq_a;     // [q_lora_rank, H]
  core::Tensor q_norm;   // [q_lora_rank]
  core::Tensor wq_b;     // [nh·D, q_lora_rank]
  core::Tensor wkv;      // [D, H]
  core::Tensor kv_norm;  // [D]
  core::Tensor wo_a;     // [G·o_lora_rank, nh·D/G]
  core::Tensor wo_b;     // [H, G·o_lora_rank]
  core::Tensor sink;     // [nh]
  CompressorWeights compressor;  // CSA and HCA layers
  IndexerWeights indexer;        // CSA layers
};

struct MoeWeights {
  core::Tensor gate;       // [E, H]
  core::Tensor bias;       // [E] selection bias (moe layers)
  core::Tensor tid2eid;    // [V, k] i32 expert ids per token id (hash_moe layers)
  core::Tensor w1;         // [E, I, H] routed gate projections
  core::Tensor w3;         // [E, I, H] routed up projections
  core::Tensor w2;         // [E, H, I] routed down projections
  core::Tensor shared_w1;  // [n_shared·I, H]
  core::Tensor shared_w3;  // [n_shared·I, H]
  core::Tensor shared_w2;  // [H, n_shared·I]
};

struct LayerWeights {
  AttentionType attention_type = AttentionType::kSliding;
  MlpType mlp_type = MlpType::kMoe;
  core::Tensor attn_norm;  // [H]
  core::Tensor ffn_norm;   // [H]
  MhcWeights hc_attn;
  MhcWeights hc_ffn;
  AttentionWeights attn;
  MoeWeights ffn;
};

// One multi-token-prediction block (spec §5); it shares the model's embedding and head.
struct MtpWeights {
  core::Tensor e_proj;  // [H, H]
  core::Tensor h_proj;  // [H, H]
  core::Tensor enorm;   // [H]
  core::Tensor hnorm;   // [H]
  core::Tensor norm;    // [H]
  HcHeadWeights hc_head;
  LayerWeights layer;
};

struct ModelWeights {
  core::Tensor embed;  // [V, H]
  core::Tensor head;   // [V, H] (shares embed's buffer when tie_word_embeddings)
  core::Tensor norm;   // [H]
  HcHeadWeights hc_head;
  std::vector<LayerWeights> layers;  // [num_layers]
  std::vector<MtpWeights> mtp;       // empty when the checkpoint has no MTP tensors
};

// Loads `path` (a model directory, with or without model.safetensors.index.json, or one
// .safetensors file) for `config`. Accepts transformers' module names, DeepSeek's hub names (with
// or without a "model." prefix, as transformers' save_pretrained writes them), per-expert or
// merged expert tensors, and f32 / bf16 / f16 / FP8 e4m3 with 128x128 block scales / FP4 e2m1
// packed experts with per-32 scales, all dequantised to f32. MTP blocks are loaded when the
// checkpoint has "mtp." tensors and the config has MTP layers.
// Errors: InvalidArgument naming, in one message, every missing, unexpected, mis-shaped or
// undecodable tensor; the TensorDirectory's errors for unreadable files.
absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, const std::string& path);
absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config,
                                         const core::TensorDirectory& directory);

}  // namespace v4rl::model
