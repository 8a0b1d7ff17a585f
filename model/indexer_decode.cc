#include "model/indexer_decode.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "model/compressor_decode.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

std::vector<Tensor> IndexerDecode(const IndexerWeights& weights, const ModelConfig& config,
                                  const RopeTable& rope, const core::TensorView& cos,
                                  const core::TensorView& sin,
                                  absl::Span<const DecodeSpan> spans,
                                  absl::Span<LayerDecodeState* const> states,
                                  const core::TensorView& x, const core::TensorView& qr) {
  const int64_t num_tokens = x.shape[0];
  const int64_t heads = config.index_n_heads;
  const int64_t dim = config.index_head_dim;
  const int64_t ratio = config.csa_compress_ratio;
  const float eps = static_cast<float>(config.rms_norm_eps);

  // Extend each sequence's keys with the windows its new tokens complete.
  Tensor key_kv, key_score;
  CompressorProject(weights.compressor, ratio, spans, x, &key_kv, &key_score);
  ForEachSpan(spans.size(), [&](size_t s) {
    const DecodeSpan& span = spans[s];
    CompressorAppend(weights.compressor, ratio, /*overlap=*/true, rope, eps, span.position,
                     key_kv.view().Slice(0, span.row, span.row + span.count),
                     key_score.view().Slice(0, span.row, span.row + span.count),
                     &states[s]->indexer_compressor, states[s]->indexer_keys.view());
  });

  // Queries from the q latent, rotated at their positions.
  Tensor q = Tensor::Empty(DType::kF32, {num_tokens, heads, dim});
  kernels::Linear(qr, weights.wq_b.view(), q.view().Reshape({num_tokens, heads * dim}));
  kernels::ApplyRope(q.view(), cos, sin, /*inverse=*/false);

  // Per-head weights, scaled by heads^-0.5 (the dim^-0.5 goes on the ReLU'd scores).
  Tensor head_weights = Tensor::Empty(DType::kF32, {num_tokens, heads});
  kernels::Linear(x, weights.weights_proj.view(), head_weights.view());
  const float head_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(heads)));
  float* w = head_weights.data<float>();
  for (int64_t i = 0; i < num_tokens * heads; ++i) w[i] *= head_scale;

  // Top-k among the entries each query may see.
  const float score_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  std::vector<Tensor> picks(spans.size());
  ForEachSpan(spans.size(), [&](size_t s) {
    const DecodeSpan& span = spans[s];
    const int64_t num_entries = (span.position + span.count) / ratio;
    const int64_t topk = std::min(config.index_topk, num_entries);
    if (topk == 0) return;
    picks[s] = Tensor::Empty(DType::kI32, {span.count, topk});
    kernels::IndexerTopK(q.view().Slice(0, span.row, span.row + span.count),
                         head_weights.view().Slice(0, span.row, span.row + span.count),
                         states[s]->indexer_keys.view().Slice(0, 0, num_entries), span.position,
                         ratio, score_scale, picks[s].view());
  });
  return picks;
}

}  // namespace v4rl::model
