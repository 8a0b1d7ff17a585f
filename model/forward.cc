#include "model/forward.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/ops.h"
#include "model/forward_inputs.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

// Rows of the embedding table for each token: [N, H].
Tensor Embed(const Tensor& table, const Tensor& ids) {
  const int64_t num_tokens = ids.numel(), hidden = table.size(1);
  Tensor out = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  for (int64_t i = 0; i < num_tokens; ++i) {
    std::memcpy(out.data<float>() + i * hidden,
                table.data<float>() + static_cast<int64_t>(ids.data<int32_t>()[i]) * hidden,
                hidden * sizeof(float));
  }
  return out;
}

// hc_head collapse, model norm, head: streams [N, n, H] -> hidden [N, H], logits [N, V].
void Head(const HcHeadWeights& hc_head, const Tensor& norm, const Tensor& head,
          const ModelConfig& config, const Tensor& streams, HcHeadActivations* acts,
          Tensor* hidden, Tensor* logits) {
  const int64_t num_tokens = streams.size(0);
  HcHeadForward(hc_head, config, streams.view(), acts);
  *hidden = Tensor::Empty(DType::kF32, {num_tokens, config.hidden_size});
  kernels::RmsNorm(acts->collapsed.view(), norm.view(), static_cast<float>(config.rms_norm_eps),
                   hidden->view());
  *logits = Tensor::Empty(DType::kF32, {num_tokens, config.vocab_size});
  kernels::Linear(hidden->view(), head.view(), logits->view());
}

}  // namespace

Model Model::Create(ModelConfig config, ModelWeights weights) {
  Model model;
  model.main_rope = MakeRopeTable(config, AttentionType::kSliding);
  model.compress_rope = MakeRopeTable(config, AttentionType::kCompressedSparse);
  model.config = std::move(config);
  model.weights = std::move(weights);
  return model;
}

absl::StatusOr<Model> Model::Load(const std::string& path) {
  V4RL_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(path));
  V4RL_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(config, path));
  return Create(std::move(config), std::move(weights));
}

Tensor BlockForward(const LayerWeights& layer, const ModelConfig& config, const RopeTable& rope,
                    int64_t batch, int64_t seq_len, const Tensor& streams_in,
                    const core::TensorView& token_ids, const core::TensorView& replay_topk_idx,
                    BlockActivations* acts, const core::TensorView& replay_index_topk) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t hidden = config.hidden_size;
  const float eps = static_cast<float>(config.rms_norm_eps);
  acts->streams_in = streams_in;

  // Attention site: collapse, normalise, attend, expand + mix.
  MhcPreForward(layer.hc_attn, config, streams_in.view(), &acts->attn_hc);
  acts->attn_in = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  kernels::RmsNorm(acts->attn_hc.collapsed.view(), layer.attn_norm.view(), eps,
                   acts->attn_in.view());
  acts->attn_out = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  AttentionForward(layer.attn, layer.attention_type, config, rope, batch, seq_len,
                   acts->attn_in.view(), &acts->attn, acts->attn_out.view(), replay_index_topk);
  acts->streams_mid = Tensor::Empty(DType::kF32, streams_in.view().shape_vector());
  MhcPostForward(acts->attn_hc, streams_in.view(), acts->attn_out.view(),
                 acts->streams_mid.view());

  // FFN site: collapse, normalise, MoE, expand + mix.
  MhcPreForward(layer.hc_ffn, config, acts->streams_mid.view(), &acts->ffn_hc);
  acts->ffn_in = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  kernels::RmsNorm(acts->ffn_hc.collapsed.view(), layer.ffn_norm.view(), eps,
                   acts->ffn_in.view());
  acts->ffn_out = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  MoeForward(layer.ffn, layer.mlp_type, config, acts->ffn_in.view(), token_ids, replay_topk_idx,
             &acts->moe, acts->ffn_out.view());
  Tensor streams_out = Tensor::Empty(DType::kF32, streams_in.view().shape_vector());
  MhcPostForward(acts->ffn_hc, acts->streams_mid.view(), acts->ffn_out.view(),
                 streams_out.view());
  return streams_out;
}

absl::StatusOr<ForwardOutput> Forward(const Model& model, const core::TensorView& input_ids,
                                      const ForwardOptions& options) {
  const ModelConfig& config = model.config;
  V4RL_ASSIGN_OR_RETURN(Tensor ids, TokenIds(input_ids, config.vocab_size, "input_ids"));
  const int64_t batch = input_ids.shape[0], seq_len = input_ids.shape[1];
  const int64_t num_tokens = batch * seq_len;
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  V4RL_RETURN_IF_ERROR(CheckRoutingReplay(options.routing_replay, config, batch, seq_len));
  V4RL_RETURN_IF_ERROR(CheckIndexReplay(options.index_replay, config, batch, seq_len));

  // Every residual stream starts as a copy of the token embedding.
  const Tensor embedded = Embed(model.weights.embed, ids);
  Tensor streams = Tensor::Empty(DType::kF32, {num_tokens, n, hidden});
  for (int64_t i = 0; i < num_tokens; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(streams.data<float>() + (i * n + j) * hidden,
                  embedded.data<float>() + i * hidden, hidden * sizeof(float));
    }
  }

  ForwardOutput output;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const LayerWeights& layer = model.weights.layers[l];
    BlockActivations acts;
    const core::TensorView replay =
        options.routing_replay.empty()
            ? core::TensorView()
            : options.routing_replay[l].Reshape({num_tokens, config.num_experts_per_tok});
    streams = BlockForward(
        layer, config, model.rope(layer.attention_type), batch, seq_len, streams, ids.view(),
        replay, &acts, options.index_replay.empty() ? core::TensorView() : options.index_replay[l]);
    if (options.return_routing) {
      Tensor routed = acts.moe.topk_idx;
      routed.mutable_view() = routed.view().Reshape({batch, seq_len, config.num_experts_per_tok});
      output.routed_experts.push_back(routed);
    }
    if (options.save_activations) {
      output.blocks.push_back(std::move(acts));
    } else if (options.save_block_inputs) {
      output.blocks.emplace_back().streams_in = acts.streams_in;
    }
  }

  Tensor hidden_state, logits;
  HcHeadActivations head_acts;
  Head(model.weights.hc_head, model.weights.norm, model.weights.head, config, streams,
       &head_acts, &hidden_state, &logits);
  FinishForwardOutput(config, options, batch, seq_len, logits, hidden_state, streams,
                      std::move(head_acts), &output);
  return output;
}

void FinishForwardOutput(const ModelConfig& config, const ForwardOptions& options, int64_t batch,
                         int64_t seq_len, const Tensor& logits, const Tensor& hidden_state,
                         const Tensor& streams, HcHeadActivations head_acts,
                         ForwardOutput* output) {
  const int64_t hidden = config.hidden_size, n = config.hc_mult;
  output->logits = logits;
  output->logits.mutable_view() = logits.view().Reshape({batch, seq_len, config.vocab_size});
  if (options.return_hidden) {
    output->hidden = hidden_state;
    output->hidden.mutable_view() = hidden_state.view().Reshape({batch, seq_len, hidden});
  }
  if (options.return_streams) {
    output->streams = streams;
    output->streams.mutable_view() = streams.view().Reshape({batch, seq_len, n, hidden});
  }
  if (options.save_activations || options.save_block_inputs) {
    output->hc_head = std::move(head_acts);
  }
}

absl::StatusOr<Tensor> MtpForward(const Model& model, const core::TensorView& streams,
                                  const core::TensorView& next_ids, int mtp_index) {
  const ModelConfig& config = model.config;
  if (mtp_index < 0 || mtp_index >= static_cast<int>(model.weights.mtp.size())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "MTP block %d is not loaded (the model has %d)", mtp_index, model.weights.mtp.size()));
  }
  V4RL_ASSIGN_OR_RETURN(Tensor ids, TokenIds(next_ids, config.vocab_size, "next_ids"));
  const int64_t batch = next_ids.shape[0], seq_len = next_ids.shape[1];
  const int64_t num_tokens = batch * seq_len;
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  if (!streams.SameShape({batch, seq_len, n, hidden}) || streams.dtype != DType::kF32 ||
      !streams.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "streams must be contiguous f32 [%d, %d, %d, %d] to match next_ids, got %s", batch,
        seq_len, n, hidden, streams.DebugString()));
  }
  const MtpWeights& mtp = model.weights.mtp[mtp_index];
  const float eps = static_cast<float>(config.rms_norm_eps);

  // e = enorm(embed(next)); h = hnorm(streams) per stream; x0[t, j] = e_proj(e)[t] + h_proj(h)[t, j].
  Tensor e = Embed(model.weights.embed, ids);
  kernels::RmsNorm(e.view(), mtp.enorm.view(), eps, e.view());
  Tensor e_proj = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  kernels::Linear(e.view(), mtp.e_proj.view(), e_proj.view());
  Tensor h = Tensor::Empty(DType::kF32, {num_tokens * n, hidden});
  kernels::RmsNorm(streams.Reshape({num_tokens * n, hidden}), mtp.hnorm.view(), eps, h.view());
  Tensor x0 = Tensor::Empty(DType::kF32, {num_tokens, n, hidden});
  kernels::Linear(h.view(), mtp.h_proj.view(), x0.view().Reshape({num_tokens * n, hidden}));
  for (int64_t i = 0; i < num_tokens; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float* row = x0.data<float>() + (i * n + j) * hidden;
      const float* add = e_proj.data<float>() + i * hidden;
      for (int64_t c = 0; c < hidden; ++c) row[c] = add[c] + row[c];
    }
  }

  BlockActivations acts;
  const Tensor out_streams =
      BlockForward(mtp.layer, config, model.rope(mtp.layer.attention_type), batch, seq_len, x0,
                   ids.view(), core::TensorView(), &acts);
  Tensor hidden_state, logits;
  HcHeadActivations head_acts;
  Head(mtp.hc_head, mtp.norm, model.weights.head, config, out_streams, &head_acts,
       &hidden_state, &logits);
  logits.mutable_view() = logits.view().Reshape({batch, seq_len, config.vocab_size});
  return logits;
}

}  // namespace v4rl::model
