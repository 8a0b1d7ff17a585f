#include "model/attention_decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "model/compressor_decode.h"
#include "model/indexer_decode.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

void AttentionDecode(const AttentionWeights& weights, AttentionType type,
                     const ModelConfig& config, const RopeTable& rope, const core::TensorView& cos,
                     const core::TensorView& sin, absl::Span<const DecodeSpan> spans,
                     absl::Span<LayerDecodeState* const> states, const core::TensorView& x,
                     const core::TensorView& out) {
  const int64_t num_tokens = x.shape[0];
  const int64_t heads = config.num_heads;
  const int64_t dim = config.head_dim;
  const int64_t window = config.sliding_window;
  const float eps = static_cast<float>(config.rms_norm_eps);

  // Query path: low-rank latent, normalised; per-head unweighted RMSNorm (pitfall 9); RoPE.
  Tensor qr_raw = Tensor::Empty(DType::kF32, {num_tokens, config.q_lora_rank});
  kernels::Linear(x, weights.wq_a.view(), qr_raw.view());
  Tensor qr = Tensor::Empty(DType::kF32, {num_tokens, config.q_lora_rank});
  kernels::RmsNorm(qr_raw.view(), weights.q_norm.view(), eps, qr.view());
  Tensor q = Tensor::Empty(DType::kF32, {num_tokens, heads, dim});
  kernels::Linear(qr.view(), weights.wq_b.view(), q.view().Reshape({num_tokens, heads * dim}));
  kernels::RmsNorm(q.view(), core::TensorView(), eps, q.view());
  kernels::ApplyRope(q.view(), cos, sin, /*inverse=*/false);

  // The single K=V head of the new tokens.
  Tensor kv_raw = Tensor::Empty(DType::kF32, {num_tokens, dim});
  kernels::Linear(x, weights.wkv.view(), kv_raw.view());
  Tensor kv = Tensor::Empty(DType::kF32, {num_tokens, 1, dim});
  kernels::RmsNorm(kv_raw.view(), weights.kv_norm.view(), eps, kv.view());
  kernels::ApplyRope(kv.view(), cos, sin, /*inverse=*/false);
  kv.mutable_view() = kv.view().Reshape({num_tokens, dim});

  // New compressed entries (and, for CSA, the indexer's picks).
  const bool compressed = type != AttentionType::kSliding;
  const int64_t ratio = config.CompressRatio(type);
  if (compressed) {
    Tensor comp_kv, comp_score;
    CompressorProject(weights.compressor, ratio, spans, x, &comp_kv, &comp_score);
    ForEachSpan(spans.size(), [&](size_t s) {
      const DecodeSpan& span = spans[s];
      CompressorAppend(weights.compressor, ratio, type == AttentionType::kCompressedSparse, rope,
                       eps, span.position,
                       comp_kv.view().Slice(0, span.row, span.row + span.count),
                       comp_score.view().Slice(0, span.row, span.row + span.count),
                       &states[s]->compressor, states[s]->entries.view());
    });
  }
  std::vector<Tensor> picks;
  if (type == AttentionType::kCompressedSparse) {
    picks = IndexerDecode(weights.indexer, config, rope, cos, sin, spans, states, x, qr.view());
  }

  // Sparse attention per sequence over its window (cached rows, then the new ones) ∪ entries.
  Tensor attn = Tensor::Empty(DType::kF32, {num_tokens, heads, dim});
  ForEachSpan(spans.size(), [&](size_t s) {
    const DecodeSpan& span = spans[s];
    LayerDecodeState& state = *states[s];
    const core::TensorView new_kv = kv.view().Slice(0, span.row, span.row + span.count);
    // Raw rows in position order: the cached positions the first new token's window reaches,
    // read from the ring, then the new tokens.
    const int64_t cached = std::min(span.position, window - 1);
    Tensor rows = Tensor::Empty(DType::kF32, {cached + span.count, dim});
    for (int64_t j = 0; j < cached; ++j) {
      const int64_t position = span.position - cached + j;
      std::memcpy(rows.data<float>() + j * dim,
                  state.window_kv.data<float>() + (position % window) * dim, dim * sizeof(float));
    }
    std::memcpy(rows.data<float>() + cached * dim, new_kv.data, span.count * dim * sizeof(float));

    kernels::SparseAttentionArgs args;
    args.q = q.view().Slice(0, span.row, span.row + span.count);
    args.kv = rows.view();
    args.sink = weights.sink.view();
    args.out = attn.view().Slice(0, span.row, span.row + span.count);
    args.q_pos0 = span.position;
    args.kv_pos0 = span.position - cached;
    args.window = window;
    args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    const int64_t num_entries = compressed ? (span.position + span.count) / ratio : 0;
    if (num_entries > 0) {
      args.comp_kv = state.entries.view().Slice(0, 0, num_entries);
      if (type == AttentionType::kCompressedSparse) {
        args.comp_idx = picks[s].view();
      } else {
        args.comp_ratio = ratio;
      }
    }
    kernels::SparseAttention(args);

    // Ring update after reading it: the last `window` new tokens take their slots.
    for (int64_t i = std::max<int64_t>(0, span.count - window); i < span.count; ++i) {
      std::memcpy(state.window_kv.data<float>() + ((span.position + i) % window) * dim,
                  new_kv.data_as<float>() + i * dim, dim * sizeof(float));
    }
  });

  // Undo the values' rotation at the query position (pitfall 4).
  kernels::ApplyRope(attn.view(), cos, sin, /*inverse=*/true);

  // Grouped output projection: group g maps its heads' nh·D/G values to o_lora_rank.
  const int64_t groups = config.o_groups;
  const int64_t group_in = heads * dim / groups;
  const int64_t rank = config.o_lora_rank;
  Tensor u = Tensor::Empty(DType::kF32, {num_tokens, groups * rank});
  const core::TensorView o_groups = attn.view().Reshape({num_tokens, groups, group_in});
  const core::TensorView w_groups = weights.wo_a.view().Reshape({groups, rank, group_in});
  const core::TensorView u_groups = u.view().Reshape({num_tokens, groups, rank});
  for (int64_t g = 0; g < groups; ++g) {
    kernels::Linear(o_groups.Select(1, g), w_groups.Select(0, g), u_groups.Select(1, g));
  }
  kernels::Linear(u.view(), weights.wo_b.view(), out);
}

}  // namespace v4rl::model
