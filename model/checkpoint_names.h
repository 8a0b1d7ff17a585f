// Checkpoint key namings of V4 models and their mapping to canonical names (DeepSeek's hub
// names, the ones params.h lists).
//
// Three spellings occur in the wild (spec §6.1, §6.5):
//  - DeepSeek hub: "layers.3.attn.wq_a.weight", "layers.3.ffn.experts.7.w1.weight", "embed.weight";
//  - transformers modules: "model.layers.3.self_attn.q_a_proj.weight",
//    "model.layers.3.mlp.experts.gate_up_proj" (experts merged), "lm_head.weight",
//    "...compressor.indexer.scorer.weights_proj.weight" (or "...indexer.weights_proj...");
//  - transformers 5.17 save_pretrained: hub names with a "model." prefix, where the attention's
//    kv_norm comes out as "attn.norm.weight" (its reverse rename is ambiguous).
// FP8 scale companions are "<base>.scale" (hub) or "<base>.weight_scale_inv" (transformers).
// Thread-safety: pure functions.
#pragma once

#include <string>

namespace v4rl::model {

// Canonical name of any supported key. Merged transformers experts map to
// "<layer>ffn.experts.gate_up_proj" / "<layer>ffn.experts.down_proj" (the loader splits them);
// scale companions map to "<canonical base>.scale". Unknown keys are returned with only the
// "model." prefix removed, so they surface as unexpected tensors.
std::string CanonicalTensorName(const std::string& key);

// "<name without .weight>.scale": the canonical name of a weight's block-scale companion.
std::string ScaleName(const std::string& canonical_weight_name);

}  // namespace v4rl::model
