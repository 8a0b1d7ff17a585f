#include "model/attention.h"

#include <cmath>

#include "kernels/ops.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

void AttentionForward(const AttentionWeights& weights, AttentionType type,
                      const ModelConfig& config, const RopeTable& rope, int64_t batch,
                      int64_t seq_len, const core::TensorView& x, AttentionActivations* acts,
                      const core::TensorView& out, const core::TensorView& replay_index_topk) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t heads = config.num_heads;
  const int64_t dim = config.head_dim;
  const float eps = static_cast<float>(config.rms_norm_eps);
  Tensor cos, sin;
  rope.Make(0, 1, seq_len, &cos, &sin);
  auto rotate_each_sequence = [&](const Tensor& t, bool inverse) {
    for (int64_t b = 0; b < batch; ++b) {
      kernels::ApplyRope(t.view().Slice(0, b * seq_len, (b + 1) * seq_len), cos.view(),
                         sin.view(), inverse);
    }
  };

  // Query path: low-rank latent, normalised; per-head unweighted RMSNorm (pitfall 9); RoPE.
  acts->qr_raw = Tensor::Empty(DType::kF32, {num_tokens, config.q_lora_rank});
  kernels::Linear(x, weights.wq_a.view(), acts->qr_raw.view());
  acts->qr = Tensor::Empty(DType::kF32, {num_tokens, config.q_lora_rank});
  kernels::RmsNorm(acts->qr_raw.view(), weights.q_norm.view(), eps, acts->qr.view());
  acts->q = Tensor::Empty(DType::kF32, {num_tokens, heads, dim});
  kernels::Linear(acts->qr.view(), weights.wq_b.view(),
                  acts->q.view().Reshape({num_tokens, heads * dim}));
  kernels::RmsNorm(acts->q.view(), core::TensorView(), eps, acts->q.view());
  rotate_each_sequence(acts->q, /*inverse=*/false);

  // The single K=V head.
  acts->kv_raw = Tensor::Empty(DType::kF32, {num_tokens, dim});
  kernels::Linear(x, weights.wkv.view(), acts->kv_raw.view());
  acts->kv = Tensor::Empty(DType::kF32, {num_tokens, 1, dim});
  kernels::RmsNorm(acts->kv_raw.view(), weights.kv_norm.view(), eps, acts->kv.view());
  rotate_each_sequence(acts->kv, /*inverse=*/false);
  acts->kv.mutable_view() = acts->kv.view().Reshape({num_tokens, dim});

  // Compressed entries (and, for CSA, the indexer's picks).
  const bool compressed = type != AttentionType::kSliding;
  if (compressed) {
    CompressorForward(weights.compressor, config.CompressRatio(type),
                      type == AttentionType::kCompressedSparse, rope, eps, batch, seq_len, x,
                      &acts->compressor);
  }
  if (type == AttentionType::kCompressedSparse) {
    IndexerForward(weights.indexer, config, rope, batch, seq_len, x, acts->qr.view(),
                   &acts->indexer, replay_index_topk);
  }

  // Sparse attention over window ∪ compressed keys, one sequence at a time.
  acts->attn = Tensor::Empty(DType::kF32, {num_tokens, heads, dim});
  acts->lse = Tensor::Empty(DType::kF32, {num_tokens, heads});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = (b + 1) * seq_len;
    kernels::SparseAttentionArgs args;
    args.q = acts->q.view().Slice(0, first, last);
    args.kv = acts->kv.view().Slice(0, first, last);
    args.sink = weights.sink.view();
    args.out = acts->attn.view().Slice(0, first, last);
    args.lse = acts->lse.view().Slice(0, first, last);
    args.window = config.sliding_window;
    args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    if (compressed && acts->compressor.entries.size(1) > 0) {
      args.comp_kv = acts->compressor.entries.view().Select(0, b);
      if (type == AttentionType::kCompressedSparse) {
        args.comp_idx = acts->indexer.topk.view().Select(0, b);
      } else {
        args.comp_ratio = config.CompressRatio(type);
      }
    }
    kernels::SparseAttention(args);
  }

  // Undo the values' rotation at the query position (pitfall 4).
  acts->o = Tensor::CopyOf(acts->attn.view());
  rotate_each_sequence(acts->o, /*inverse=*/true);

  // Grouped output projection: group g maps its heads' nh·D/G values to o_lora_rank.
  const int64_t groups = config.o_groups;
  const int64_t group_in = heads * dim / groups;
  const int64_t rank = config.o_lora_rank;
  acts->u = Tensor::Empty(DType::kF32, {num_tokens, groups * rank});
  const core::TensorView o_groups = acts->o.view().Reshape({num_tokens, groups, group_in});
  const core::TensorView w_groups = weights.wo_a.view().Reshape({groups, rank, group_in});
  const core::TensorView u_groups = acts->u.view().Reshape({num_tokens, groups, rank});
  for (int64_t g = 0; g < groups; ++g) {
    kernels::Linear(o_groups.Select(1, g), w_groups.Select(0, g), u_groups.Select(1, g));
  }
  kernels::Linear(acts->u.view(), weights.wo_b.view(), out);
}

}  // namespace v4rl::model
