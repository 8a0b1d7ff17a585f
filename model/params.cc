#include "model/params.h"

#include "absl/strings/str_cat.h"
#include "model/weights.h"

namespace v4rl::model {
namespace {

using Visit = std::function<void(const ParamSpec&, core::Tensor*)>;

// Applies `visit` with slots taken from a struct only when one is given.
class Walker {
 public:
  explicit Walker(const Visit& visit) : visit_(visit) {}

  void Param(const std::string& name, core::Shape shape, core::Tensor* slot,
             bool is_index_table = false, bool is_routed_experts = false) {
    visit_(ParamSpec{name, std::move(shape), is_index_table, is_routed_experts}, slot);
  }

 private:
  const Visit& visit_;
};

void VisitMhc(Walker& w, const ModelConfig& c, const std::string& prefix, MhcWeights* m) {
  const int64_t mixes = (2 + c.hc_mult) * c.hc_mult;
  w.Param(prefix + "fn", {mixes, c.hc_mult * c.hidden_size}, m ? &m->fn : nullptr);
  w.Param(prefix + "base", {mixes}, m ? &m->base : nullptr);
  w.Param(prefix + "scale", {3}, m ? &m->scale : nullptr);
}

void VisitHcHead(Walker& w, const ModelConfig& c, const std::string& prefix, HcHeadWeights* h) {
  w.Param(prefix + "hc_head_fn", {c.hc_mult, c.hc_mult * c.hidden_size}, h ? &h->fn : nullptr);
  w.Param(prefix + "hc_head_base", {c.hc_mult}, h ? &h->base : nullptr);
  w.Param(prefix + "hc_head_scale", {1}, h ? &h->scale : nullptr);
}

void VisitCompressor(Walker& w, const ModelConfig& c, const std::string& prefix, int64_t width,
                     int64_t entry_dim, int64_t ratio, CompressorWeights* cw) {
  w.Param(prefix + "wkv.weight", {width, c.hidden_size}, cw ? &cw->wkv : nullptr);
  w.Param(prefix + "wgate.weight", {width, c.hidden_size}, cw ? &cw->wgate : nullptr);
  w.Param(prefix + "ape", {ratio, width}, cw ? &cw->ape : nullptr);
  w.Param(prefix + "norm.weight", {entry_dim}, cw ? &cw->norm : nullptr);
}

void VisitLayer(Walker& w, const ModelConfig& c, const std::string& prefix,
                AttentionType attention_type, MlpType mlp_type, LayerWeights* l) {
  if (l != nullptr) {
    l->attention_type = attention_type;
    l->mlp_type = mlp_type;
  }
  const int64_t H = c.hidden_size, D = c.head_dim;
  w.Param(prefix + "attn_norm.weight", {H}, l ? &l->attn_norm : nullptr);
  w.Param(prefix + "ffn_norm.weight", {H}, l ? &l->ffn_norm : nullptr);
  VisitMhc(w, c, prefix + "hc_attn_", l ? &l->hc_attn : nullptr);
  VisitMhc(w, c, prefix + "hc_ffn_", l ? &l->hc_ffn : nullptr);

  AttentionWeights* a = l ? &l->attn : nullptr;
  const std::string ap = prefix + "attn.";
  w.Param(ap + "wq_a.weight", {c.q_lora_rank, H}, a ? &a->wq_a : nullptr);
  w.Param(ap + "q_norm.weight", {c.q_lora_rank}, a ? &a->q_norm : nullptr);
  w.Param(ap + "wq_b.weight", {c.num_heads * D, c.q_lora_rank}, a ? &a->wq_b : nullptr);
  w.Param(ap + "wkv.weight", {D, H}, a ? &a->wkv : nullptr);
  w.Param(ap + "kv_norm.weight", {D}, a ? &a->kv_norm : nullptr);
  w.Param(ap + "wo_a.weight", {c.o_groups * c.o_lora_rank, c.num_heads * D / c.o_groups},
          a ? &a->wo_a : nullptr);
  w.Param(ap + "wo_b.weight", {H, c.o_groups * c.o_lora_rank}, a ? &a->wo_b : nullptr);
  w.Param(ap + "attn_sink", {c.num_heads}, a ? &a->sink : nullptr);
  if (attention_type == AttentionType::kCompressedSparse) {
    const int64_t m = c.csa_compress_ratio;
    VisitCompressor(w, c, ap + "compressor.", 2 * D, D, m, a ? &a->compressor : nullptr);
    IndexerWeights* iw = a ? &a->indexer : nullptr;
    w.Param(ap + "indexer.wq_b.weight", {c.index_n_heads * c.index_head_dim, c.q_lora_rank},
            iw ? &iw->wq_b : nullptr);
    w.Param(ap + "indexer.weights_proj.weight", {c.index_n_heads, H},
            iw ? &iw->weights_proj : nullptr);
    VisitCompressor(w, c, ap + "indexer.compressor.", 2 * c.index_head_dim, c.index_head_dim, m,
                    iw ? &iw->compressor : nullptr);
  } else if (attention_type == AttentionType::kHeavilyCompressed) {
    VisitCompressor(w, c, ap + "compressor.", D, D, c.hca_compress_ratio,
                    a ? &a->compressor : nullptr);
  }

  MoeWeights* f = l ? &l->ffn : nullptr;
  const std::string fp = prefix + "ffn.";
  const int64_t E = c.num_routed_experts, I = c.moe_intermediate_size;
  w.Param(fp + "gate.weight", {E, H}, f ? &f->gate : nullptr);
  if (mlp_type == MlpType::kHashMoe) {
    w.Param(fp + "gate.tid2eid", {c.vocab_size, c.num_experts_per_tok},
            f ? &f->tid2eid : nullptr, /*is_index_table=*/true);
  } else {
    w.Param(fp + "gate.bias", {E}, f ? &f->bias : nullptr);
  }
  w.Param(fp + "experts.w1.weight", {E, I, H}, f ? &f->w1 : nullptr, false, true);
  w.Param(fp + "experts.w2.weight", {E, H, I}, f ? &f->w2 : nullptr, false, true);
  w.Param(fp + "experts.w3.weight", {E, I, H}, f ? &f->w3 : nullptr, false, true);
  if (c.num_shared_experts > 0) {
    const int64_t S = c.num_shared_experts * I;
    w.Param(fp + "shared_experts.w1.weight", {S, H}, f ? &f->shared_w1 : nullptr);
    w.Param(fp + "shared_experts.w2.weight", {H, S}, f ? &f->shared_w2 : nullptr);
    w.Param(fp + "shared_experts.w3.weight", {S, H}, f ? &f->shared_w3 : nullptr);
  }
}

}  // namespace

void VisitParams(const ModelConfig& config, ModelWeights* weights, bool include_mtp,
                 const Visit& visit) {
  Walker w(visit);
  const int64_t V = config.vocab_size, H = config.hidden_size;
  if (weights != nullptr) {
    weights->layers.resize(config.num_layers);
    if (include_mtp) weights->mtp.resize(config.num_mtp_layers);
  }
  w.Param("embed.weight", {V, H}, weights ? &weights->embed : nullptr);
  if (!config.tie_word_embeddings) {
    w.Param("head.weight", {V, H}, weights ? &weights->head : nullptr);
  }
  w.Param("norm.weight", {H}, weights ? &weights->norm : nullptr);
  VisitHcHead(w, config, "", weights ? &weights->hc_head : nullptr);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    VisitLayer(w, config, absl::StrCat("layers.", i, "."), config.layer_types[i],
               config.mlp_layer_types[i], weights ? &weights->layers[i] : nullptr);
  }
  if (!include_mtp) return;
  for (int64_t i = 0; i < config.num_mtp_layers; ++i) {
    MtpWeights* m = weights ? &weights->mtp[i] : nullptr;
    const std::string prefix = absl::StrCat("mtp.", i, ".");
    VisitLayer(w, config, prefix, config.mtp_layer_type, MlpType::kMoe, m ? &m->layer : nullptr);
    w.Param(prefix + "e_proj.weight", {H, H}, m ? &m->e_proj : nullptr);
    w.Param(prefix + "h_proj.weight", {H, H}, m ? &m->h_proj : nullptr);
    w.Param(prefix + "enorm.weight", {H}, m ? &m->enorm : nullptr);
    w.Param(prefix + "hnorm.weight", {H}, m ? &m->hnorm : nullptr);
    w.Param(prefix + "norm.weight", {H}, m ? &m->norm : nullptr);
    VisitHcHead(w, config, prefix, m ? &m->hc_head : nullptr);
  }
}

std::vector<ParamSpec> ModelParamSpecs(const ModelConfig& config, bool include_mtp) {
  std::vector<ParamSpec> specs;
  VisitParams(config, nullptr, include_mtp,
              [&](const ParamSpec& spec, core::Tensor*) { specs.push_back(spec); });
  return specs;
}

}  // namespace v4rl::model
