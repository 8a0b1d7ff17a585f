#include "model/backward.h"

#include <functional>

#include "absl/strings/match.h"
#include "kernels/backward_ops.h"
#include "model/attention_backward.h"
#include "model/mhc_backward.h"
#include "model/moe_backward.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

// [B, T] i32/i64 ids (validated by Forward) as contiguous i32 [B·T].
Tensor FlatTokenIds(const core::TensorView& ids) {
  const int64_t batch = ids.shape[0], seq_len = ids.shape[1];
  Tensor out = Tensor::Empty(DType::kI32, {batch * seq_len});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const int64_t offset = b * ids.strides[0] + t * ids.strides[1];
      out.data<int32_t>()[b * seq_len + t] =
          ids.dtype == DType::kI64 ? static_cast<int32_t>(ids.data_as<int64_t>()[offset])
                                   : ids.data_as<int32_t>()[offset];
    }
  }
  return out;
}

// Backward of one mHC site around a sub-block F with input norm `norm`:
//   collapsed = Σ pre·X; y = F(norm(collapsed)); X' = post ⊗ y + combᵀ X.
// dstreams_out: dL/dX'. Returns dL/dX. sub_backward(dy, dsub_in) adds F's input gradient.
Tensor SiteBackward(const MhcWeights& weights, const Tensor& norm, const ModelConfig& config,
                    const core::TensorView& streams, const MhcActivations& acts, const Tensor& y,
                    const core::TensorView& dstreams_out,
                    const std::function<void(const Tensor&, const Tensor&)>& sub_backward,
                    MhcWeights* grads, const Tensor& dnorm) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  Tensor dstreams = Tensor::Zeros(DType::kF32, {num_tokens, n, hidden});
  Tensor dy = Tensor::Zeros(DType::kF32, {num_tokens, hidden});
  Tensor dpost = Tensor::Zeros(DType::kF32, {num_tokens, n});
  Tensor dcomb = Tensor::Zeros(DType::kF32, {num_tokens, n, n});
  MhcPostBackward(acts, streams, y.view(), dstreams_out, dstreams.view(), dy.view(), dpost.view(),
                  dcomb.view());
  Tensor dsub_in = Tensor::Zeros(DType::kF32, {num_tokens, hidden});
  sub_backward(dy, dsub_in);
  Tensor dcollapsed = Tensor::Zeros(DType::kF32, {num_tokens, hidden});
  kernels::RmsNormBackward(acts.collapsed.view(), norm.view(),
                           static_cast<float>(config.rms_norm_eps), dsub_in.view(),
                           dcollapsed.view(), dnorm.view());
  MhcPreBackward(weights, config, streams, acts, dcollapsed.view(), dpost.view(), dcomb.view(),
                 dstreams.view(), grads);
  return dstreams;
}

}  // namespace

bool IsTrainable(const ParamSpec& spec) {
  return !spec.is_index_table && !absl::EndsWith(spec.name, "gate.bias");
}

ModelWeights ZeroGradients(const ModelConfig& config) {
  ModelWeights grads;
  VisitParams(config, &grads, /*include_mtp=*/false, [](const ParamSpec& spec, core::Tensor* slot) {
    if (IsTrainable(spec)) *slot = Tensor::Zeros(DType::kF32, spec.shape);
  });
  // A tied head is the embedding: both uses add to one gradient.
  if (config.tie_word_embeddings) grads.head = grads.embed;
  return grads;
}

Tensor BlockBackward(const LayerWeights& layer, const ModelConfig& config, const RopeTable& rope,
                     int64_t batch, int64_t seq_len, const BlockActivations& acts,
                     const core::TensorView& dstreams_out, LayerWeights* grads) {
  // FFN site (the block's second half) first.
  Tensor dstreams_mid = SiteBackward(
      layer.hc_ffn, layer.ffn_norm, config, acts.streams_mid.view(), acts.ffn_hc, acts.ffn_out,
      dstreams_out,
      [&](const Tensor& dy, const Tensor& dx) {
        MoeBackward(layer.ffn, config, acts.ffn_in.view(), acts.moe, dy.view(), dx.view(),
                    &grads->ffn);
      },
      &grads->hc_ffn, grads->ffn_norm);
  return SiteBackward(
      layer.hc_attn, layer.attn_norm, config, acts.streams_in.view(), acts.attn_hc, acts.attn_out,
      dstreams_mid.view(),
      [&](const Tensor& dy, const Tensor& dx) {
        AttentionBackward(layer.attn, layer.attention_type, config, rope, batch, seq_len,
                          acts.attn_in.view(), acts.attn, dy.view(), dx.view(), &grads->attn);
      },
      &grads->hc_attn, grads->attn_norm);
}

void Backward(const Model& model, const core::TensorView& input_ids, const ForwardOutput& forward,
              const core::TensorView& dlogits, const BackwardOptions& options,
              ModelWeights* grads) {
  const ModelConfig& config = model.config;
  const ModelWeights& weights = model.weights;
  const int64_t batch = input_ids.shape[0], seq_len = input_ids.shape[1];
  const int64_t num_tokens = batch * seq_len;
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  V4RL_CHECK(forward.hidden.defined() && forward.streams.defined() &&
             forward.hc_head.collapsed.defined())
      << "Backward needs a forward with return_hidden, return_streams and saved activations";
  V4RL_CHECK_EQ(static_cast<int64_t>(forward.blocks.size()), config.num_layers)
      << "Backward needs every block's saved activations (or inputs, with recompute)";
  if (options.recompute) {
    V4RL_CHECK_EQ(static_cast<int64_t>(forward.routed_experts.size()), config.num_layers)
        << "Backward with recompute replays the forward's routing: use return_routing";
  } else {
    V4RL_CHECK(config.num_layers == 0 || forward.blocks[0].ffn_out.defined())
        << "Backward without recompute needs a forward with save_activations";
  }
  V4RL_CHECK(dlogits.dtype == DType::kF32 && dlogits.is_contiguous() &&
             dlogits.SameShape({batch, seq_len, config.vocab_size}))
      << "Backward: dlogits must be contiguous f32 [B, T, V], got " << dlogits.DebugString();
  const Tensor ids = FlatTokenIds(input_ids);

  // Head: logits = hidden · headᵀ, hidden = norm(hc_head collapse of the final streams).
  Tensor dhidden = Tensor::Zeros(DType::kF32, {num_tokens, hidden});
  kernels::LinearBackward(forward.hidden.view().Reshape({num_tokens, hidden}), weights.head.view(),
                          dlogits.Reshape({num_tokens, config.vocab_size}), dhidden.view(),
                          grads->head.view());
  Tensor dcollapsed = Tensor::Zeros(DType::kF32, {num_tokens, hidden});
  kernels::RmsNormBackward(forward.hc_head.collapsed.view(), weights.norm.view(),
                           static_cast<float>(config.rms_norm_eps), dhidden.view(),
                           dcollapsed.view(), grads->norm.view());
  Tensor dstreams = Tensor::Zeros(DType::kF32, {num_tokens, n, hidden});
  HcHeadBackward(weights.hc_head, config, forward.streams.view().Reshape({num_tokens, n, hidden}),
                 forward.hc_head, dcollapsed.view(), dstreams.view(), &grads->hc_head);

  // Blocks, last first; with recompute, each block's activations are rebuilt from its input.
  for (int64_t l = config.num_layers - 1; l >= 0; --l) {
    const LayerWeights& layer = weights.layers[l];
    const RopeTable& rope = model.rope(layer.attention_type);
    const BlockActivations* acts = &forward.blocks[l];
    BlockActivations recomputed;
    if (options.recompute) {
      const core::TensorView routing =
          forward.routed_experts[l].view().Reshape({num_tokens, config.num_experts_per_tok});
      BlockForward(layer, config, rope, batch, seq_len, acts->streams_in, ids.view(), routing,
                   &recomputed);
      acts = &recomputed;
    }
    dstreams = BlockBackward(layer, config, rope, batch, seq_len, *acts, dstreams.view(),
                             &grads->layers[l]);
  }

  // Embedding: every stream started as a copy of the token's row.
  float* dembed = grads->embed.data<float>();
  const float* ds = dstreams.data<float>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* row = dembed + static_cast<int64_t>(ids.data<int32_t>()[t]) * hidden;
    for (int64_t j = 0; j < n; ++j) {
      const float* src = ds + (t * n + j) * hidden;
      for (int64_t h = 0; h < hidden; ++h) row[h] += src[h];
    }
  }
}

}  // namespace v4rl::model
