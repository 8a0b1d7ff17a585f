#include "model/indexer.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

void IndexerForward(const IndexerWeights& weights, const ModelConfig& config, const RopeTable& rope,
                    int64_t batch, int64_t seq_len, const core::TensorView& x,
                    const core::TensorView& qr, IndexerActivations* acts,
                    const core::TensorView& replay_topk) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t heads = config.index_n_heads;
  const int64_t dim = config.index_head_dim;
  const int64_t ratio = config.csa_compress_ratio;
  CompressorForward(weights.compressor, ratio, /*overlap=*/true, rope,
                    static_cast<float>(config.rms_norm_eps), batch, seq_len, x, &acts->keys);
  const int64_t num_entries = acts->keys.entries.size(1);

  // Queries from the q latent, rotated at their positions.
  acts->q = Tensor::Empty(DType::kF32, {num_tokens, heads, dim});
  kernels::Linear(qr, weights.wq_b.view(), acts->q.view().Reshape({num_tokens, heads * dim}));
  Tensor cos, sin;
  rope.Make(0, 1, seq_len, &cos, &sin);
  for (int64_t b = 0; b < batch; ++b) {
    kernels::ApplyRope(acts->q.view().Slice(0, b * seq_len, (b + 1) * seq_len), cos.view(),
                       sin.view(), /*inverse=*/false);
  }

  // Per-head weights, scaled by heads^-0.5 (the dim^-0.5 goes on the ReLU'd scores).
  acts->weights = Tensor::Empty(DType::kF32, {num_tokens, heads});
  kernels::Linear(x, weights.weights_proj.view(), acts->weights.view());
  const float head_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(heads)));
  float* w = acts->weights.data<float>();
  for (int64_t i = 0; i < num_tokens * heads; ++i) w[i] *= head_scale;

  if (replay_topk.data != nullptr) {
    acts->topk = Tensor::CopyOf(replay_topk);
    return;
  }
  const int64_t topk = std::min(config.index_topk, num_entries);
  acts->topk = Tensor::Empty(DType::kI32, {batch, seq_len, topk});
  if (topk == 0) return;
  const float score_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len;
    kernels::IndexerTopK(acts->q.view().Slice(0, first, first + seq_len),
                         acts->weights.view().Slice(0, first, first + seq_len),
                         acts->keys.entries.view().Select(0, b), /*q_pos0=*/0, ratio,
                         score_scale, acts->topk.view().Select(0, b));
  }
}

}  // namespace v4rl::model
