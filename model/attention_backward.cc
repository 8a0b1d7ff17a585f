#include "model/attention_backward.h"

#include <cmath>

#include "kernels/backward_ops.h"
#include "kernels/ops.h"
#include "model/compressor_backward.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

void AttentionBackward(const AttentionWeights& weights, AttentionType type,
                       const ModelConfig& config, const RopeTable& rope, int64_t batch,
                       int64_t seq_len, const core::TensorView& x, const AttentionActivations& acts,
                       const core::TensorView& dout, const core::TensorView& dx,
                       AttentionWeights* grads) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t heads = config.num_heads;
  const int64_t dim = config.head_dim;
  const float eps = static_cast<float>(config.rms_norm_eps);
  Tensor cos, sin;
  rope.Make(0, 1, seq_len, &cos, &sin);
  auto rotate_back_each_sequence = [&](const Tensor& grad, bool inverse) {
    for (int64_t b = 0; b < batch; ++b) {
      kernels::ApplyRopeBackward(grad.view().Slice(0, b * seq_len, (b + 1) * seq_len), cos.view(),
                                 sin.view(), inverse);
    }
  };

  // Grouped output projection: out = u · wo_bᵀ, u[:, g] = o[:, g] · wo_a[g]ᵀ.
  const int64_t groups = config.o_groups;
  const int64_t group_in = heads * dim / groups;
  const int64_t rank = config.o_lora_rank;
  Tensor du = Tensor::Zeros(DType::kF32, {num_tokens, groups * rank});
  kernels::LinearBackward(acts.u.view(), weights.wo_b.view(), dout, du.view(), grads->wo_b.view());
  Tensor dattn = Tensor::Zeros(DType::kF32, {num_tokens, heads, dim});
  const core::TensorView o_groups = acts.o.view().Reshape({num_tokens, groups, group_in});
  const core::TensorView do_groups = dattn.view().Reshape({num_tokens, groups, group_in});
  const core::TensorView w_groups = weights.wo_a.view().Reshape({groups, rank, group_in});
  const core::TensorView dw_groups = grads->wo_a.view().Reshape({groups, rank, group_in});
  const core::TensorView du_groups = du.view().Reshape({num_tokens, groups, rank});
  for (int64_t g = 0; g < groups; ++g) {
    kernels::LinearBackward(o_groups.Select(1, g), w_groups.Select(0, g), du_groups.Select(1, g),
                            do_groups.Select(1, g), dw_groups.Select(0, g));
  }
  // Output de-rotation (conjugate RoPE at the query position).
  rotate_back_each_sequence(dattn, /*inverse=*/true);

  // Sparse attention, one sequence at a time; compressed entries get gradient only where a
  // query attended to them.
  const bool compressed = type != AttentionType::kSliding;
  const int64_t num_entries = compressed ? acts.compressor.entries.size(1) : 0;
  Tensor dq = Tensor::Zeros(DType::kF32, {num_tokens, heads, dim});
  Tensor dkv = Tensor::Zeros(DType::kF32, {num_tokens, 1, dim});
  Tensor dentries;
  if (num_entries > 0) dentries = Tensor::Zeros(DType::kF32, {batch, num_entries, dim});
  const core::TensorView dkv_rows = dkv.view().Reshape({num_tokens, dim});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = (b + 1) * seq_len;
    kernels::SparseAttentionBackwardArgs args;
    args.q = acts.q.view().Slice(0, first, last);
    args.kv = acts.kv.view().Slice(0, first, last);
    args.sink = weights.sink.view();
    args.dout = dattn.view().Slice(0, first, last);
    args.dq = dq.view().Slice(0, first, last);
    args.dkv = dkv_rows.Slice(0, first, last);
    args.dsink = grads->sink.view();
    args.window = config.sliding_window;
    args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    if (num_entries > 0) {
      args.comp_kv = acts.compressor.entries.view().Select(0, b);
      args.dcomp_kv = dentries.view().Select(0, b);
      if (type == AttentionType::kCompressedSparse) {
        args.comp_idx = acts.indexer.topk.view().Select(0, b);
      } else {
        args.comp_ratio = config.CompressRatio(type);
      }
    }
    kernels::SparseAttentionBackward(args);
  }
  // Indexer alignment loss hook: the LM loss stops here for the indexer (see the header); an
  // auxiliary loss on acts.indexer would add its gradients to grads->indexer at this point.

  // Query path: RoPE, per-head unweighted RMSNorm (its input q · wq_bᵀ is recomputed rather than
  // saved: it is the largest per-token activation), wq_b, q_norm, wq_a.
  rotate_back_each_sequence(dq, /*inverse=*/false);
  Tensor q_raw = Tensor::Empty(DType::kF32, {num_tokens, heads, dim});
  kernels::Linear(acts.qr.view(), weights.wq_b.view(),
                  q_raw.view().Reshape({num_tokens, heads * dim}));
  Tensor dq_raw = Tensor::Zeros(DType::kF32, {num_tokens, heads, dim});
  kernels::RmsNormBackward(q_raw.view(), core::TensorView(), eps, dq.view(), dq_raw.view(),
                           core::TensorView());
  Tensor dqr = Tensor::Zeros(DType::kF32, {num_tokens, config.q_lora_rank});
  kernels::LinearBackward(acts.qr.view(), weights.wq_b.view(),
                          dq_raw.view().Reshape({num_tokens, heads * dim}), dqr.view(),
                          grads->wq_b.view());
  Tensor dqr_raw = Tensor::Zeros(DType::kF32, {num_tokens, config.q_lora_rank});
  kernels::RmsNormBackward(acts.qr_raw.view(), weights.q_norm.view(), eps, dqr.view(),
                           dqr_raw.view(), grads->q_norm.view());
  kernels::LinearBackward(x, weights.wq_a.view(), dqr_raw.view(), dx, grads->wq_a.view());

  // Shared K=V path: RoPE, kv_norm, wkv.
  rotate_back_each_sequence(dkv, /*inverse=*/false);
  Tensor dkv_raw = Tensor::Zeros(DType::kF32, {num_tokens, dim});
  kernels::RmsNormBackward(acts.kv_raw.view(), weights.kv_norm.view(), eps, dkv_rows,
                           dkv_raw.view(), grads->kv_norm.view());
  kernels::LinearBackward(x, weights.wkv.view(), dkv_raw.view(), dx, grads->wkv.view());

  if (num_entries > 0) {
    CompressorBackward(weights.compressor, config.CompressRatio(type),
                       type == AttentionType::kCompressedSparse, rope, eps, batch, seq_len, x,
                       acts.compressor, dentries, dx, &grads->compressor);
  }
}

}  // namespace v4rl::model
