#include "model/decode.h"

#include <cstring>
#include <set>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/ops.h"
#include "model/attention_decode.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

absl::Status ValidateInputs(const ModelConfig& config, absl::Span<const DecodeInput> inputs) {
  if (inputs.empty()) return absl::InvalidArgumentError("decode step has no inputs");
  std::set<const DecodeState*> seen;
  for (size_t s = 0; s < inputs.size(); ++s) {
    const DecodeInput& input = inputs[s];
    if (input.state == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("decode input %d has no state", s));
    }
    if (!seen.insert(input.state).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("decode input %d reuses the state of an earlier input", s));
    }
    if (static_cast<int64_t>(input.state->layers.size()) != config.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrFormat("decode input %d: state has %d layers, the model %d", s,
                          input.state->layers.size(), config.num_layers));
    }
    if (input.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("decode input %d has no tokens", s));
    }
    const int64_t count = static_cast<int64_t>(input.tokens.size());
    if (input.state->num_tokens + count > input.state->capacity) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "decode input %d: %d tokens after %d would exceed the state's capacity %d", s, count,
          input.state->num_tokens, input.state->capacity));
    }
    for (int64_t i = 0; i < count; ++i) {
      const int32_t id = input.tokens[i];
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrFormat("decode input %d: token %d = %d is outside the vocabulary [0, %d)", s,
                            i, id, config.vocab_size));
      }
    }
  }
  return absl::OkStatus();
}

// cos, sin [N, rd / 2] of every new token's position in `rope`.
void RopeRows(const RopeTable& rope, absl::Span<const DecodeSpan> spans, int64_t num_tokens,
              Tensor* cos, Tensor* sin) {
  const int64_t half = rope.rope_dim() / 2;
  *cos = Tensor::Empty(DType::kF32, {num_tokens, half});
  *sin = Tensor::Empty(DType::kF32, {num_tokens, half});
  for (const DecodeSpan& span : spans) {
    rope.Fill(span.position, 1, span.count, cos->data<float>() + span.row * half,
              sin->data<float>() + span.row * half);
  }
}

// One decoder block over the step's tokens: streams [N, n, H] f32 -> returned [N, n, H] f32.
// token_ids: [N] i32. routed (may be null): set to [N, k] i32.
Tensor BlockDecode(const LayerWeights& layer, const ModelConfig& config, const RopeTable& rope,
                   const Tensor& cos, const Tensor& sin, absl::Span<const DecodeSpan> spans,
                   absl::Span<LayerDecodeState* const> states, const Tensor& streams,
                   const Tensor& token_ids, Tensor* routed) {
  const int64_t num_tokens = streams.size(0);
  const int64_t hidden = config.hidden_size;
  const float eps = static_cast<float>(config.rms_norm_eps);

  // Attention site: collapse, normalise, attend, expand + mix.
  MhcActivations attn_hc;
  MhcPreForward(layer.hc_attn, config, streams.view(), &attn_hc);
  Tensor attn_in = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  kernels::RmsNorm(attn_hc.collapsed.view(), layer.attn_norm.view(), eps, attn_in.view());
  Tensor attn_out = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  AttentionDecode(layer.attn, layer.attention_type, config, rope, cos.view(), sin.view(), spans,
                  states, attn_in.view(), attn_out.view());
  Tensor mid = Tensor::Empty(DType::kF32, streams.view().shape_vector());
  MhcPostForward(attn_hc, streams.view(), attn_out.view(), mid.view());

  // FFN site: collapse, normalise, MoE, expand + mix.
  MhcActivations ffn_hc;
  MhcPreForward(layer.hc_ffn, config, mid.view(), &ffn_hc);
  Tensor ffn_in = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  kernels::RmsNorm(ffn_hc.collapsed.view(), layer.ffn_norm.view(), eps, ffn_in.view());
  Tensor ffn_out = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  MoeActivations moe;
  MoeForward(layer.ffn, layer.mlp_type, config, ffn_in.view(), token_ids.view(), &moe,
             ffn_out.view());
  if (routed != nullptr) *routed = moe.topk_idx;
  Tensor out = Tensor::Empty(DType::kF32, streams.view().shape_vector());
  MhcPostForward(ffn_hc, mid.view(), ffn_out.view(), out.view());
  return out;
}

}  // namespace

absl::StatusOr<DecodeStepOutput> DecodeStep(const Model& model,
                                            absl::Span<const DecodeInput> inputs,
                                            const DecodeStepOptions& options) {
  const ModelConfig& config = model.config;
  V4RL_RETURN_IF_ERROR(ValidateInputs(config, inputs));
  const int64_t n = config.hc_mult, hidden = config.hidden_size;

  // Lay the new tokens out token-major, sequence after sequence.
  std::vector<DecodeSpan> spans(inputs.size());
  int64_t num_tokens = 0;
  for (size_t s = 0; s < inputs.size(); ++s) {
    spans[s] = {num_tokens, static_cast<int64_t>(inputs[s].tokens.size()),
                inputs[s].state->num_tokens};
    num_tokens += spans[s].count;
  }
  Tensor ids = Tensor::Empty(DType::kI32, {num_tokens});
  for (size_t s = 0; s < inputs.size(); ++s) {
    std::memcpy(ids.data<int32_t>() + spans[s].row, inputs[s].tokens.data(),
                spans[s].count * sizeof(int32_t));
  }

  // Every residual stream starts as a copy of the token embedding.
  Tensor streams = Tensor::Empty(DType::kF32, {num_tokens, n, hidden});
  for (int64_t i = 0; i < num_tokens; ++i) {
    const float* row =
        model.weights.embed.data<float>() + static_cast<int64_t>(ids.data<int32_t>()[i]) * hidden;
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(streams.data<float>() + (i * n + j) * hidden, row, hidden * sizeof(float));
    }
  }

  // RoPE rows of both tables, shared by every layer of a type.
  Tensor main_cos, main_sin, compress_cos, compress_sin;
  RopeRows(model.main_rope, spans, num_tokens, &main_cos, &main_sin);
  RopeRows(model.compress_rope, spans, num_tokens, &compress_cos, &compress_sin);

  DecodeStepOutput output;
  std::vector<LayerDecodeState*> states(inputs.size());
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const LayerWeights& layer = model.weights.layers[l];
    for (size_t s = 0; s < inputs.size(); ++s) states[s] = &inputs[s].state->layers[l];
    const bool sliding = layer.attention_type == AttentionType::kSliding;
    Tensor routed;
    streams = BlockDecode(layer, config, model.rope(layer.attention_type),
                          sliding ? main_cos : compress_cos, sliding ? main_sin : compress_sin,
                          spans, states, streams, ids, options.return_routing ? &routed : nullptr);
    if (options.return_routing) output.routed_experts.push_back(routed);
  }
  for (size_t s = 0; s < inputs.size(); ++s) inputs[s].state->num_tokens += spans[s].count;

  // Head over the rows that need logits: hc_head collapse, model norm, head.
  Tensor head_streams = streams;
  if (!options.all_logits) {
    head_streams = Tensor::Empty(DType::kF32, {static_cast<int64_t>(inputs.size()), n, hidden});
    for (size_t s = 0; s < inputs.size(); ++s) {
      const int64_t last = spans[s].row + spans[s].count - 1;
      std::memcpy(head_streams.data<float>() + s * n * hidden,
                  streams.data<float>() + last * n * hidden, n * hidden * sizeof(float));
    }
  }
  const int64_t rows = head_streams.size(0);
  HcHeadActivations head;
  HcHeadForward(model.weights.hc_head, config, head_streams.view(), &head);
  Tensor normed = Tensor::Empty(DType::kF32, {rows, hidden});
  kernels::RmsNorm(head.collapsed.view(), model.weights.norm.view(),
                   static_cast<float>(config.rms_norm_eps), normed.view());
  output.logits = Tensor::Empty(DType::kF32, {rows, config.vocab_size});
  kernels::Linear(normed.view(), model.weights.head.view(), output.logits.view());
  return output;
}

}  // namespace v4rl::model
