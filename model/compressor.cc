#include "model/compressor.h"

#include "kernels/ops.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

void CompressorForward(const CompressorWeights& weights, int64_t ratio, bool overlap,
                       const RopeTable& rope, float eps, int64_t batch, int64_t seq_len,
                       const core::TensorView& x, CompressorActivations* acts) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t width = weights.wkv.size(0);
  const int64_t entry_dim = overlap ? width / 2 : width;
  const int64_t num_entries = seq_len / ratio;

  // Values and gate scores for every token; the gate gets the bias of its slot in the window.
  acts->kv = Tensor::Empty(DType::kF32, {num_tokens, width});
  acts->score = Tensor::Empty(DType::kF32, {num_tokens, width});
  kernels::Linear(x, weights.wkv.view(), acts->kv.view());
  kernels::Linear(x, weights.wgate.view(), acts->score.view());
  const float* ape = weights.ape.data<float>();
  float* score = acts->score.data<float>();
  for (int64_t row = 0; row < num_tokens; ++row) {
    const float* bias = ape + ((row % seq_len) % ratio) * width;
    for (int64_t c = 0; c < width; ++c) score[row * width + c] += bias[c];
  }

  // Pool the complete windows of each sequence.
  acts->pooled = Tensor::Empty(DType::kF32, {batch, num_entries, entry_dim});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len;
    kernels::CompressPool(acts->kv.view().Slice(0, first, first + num_entries * ratio),
                          acts->score.view().Slice(0, first, first + num_entries * ratio), ratio,
                          overlap, /*first_entry=*/0, acts->pooled.view().Select(0, b));
  }

  // Normalise, then rotate entry w at position w · ratio.
  acts->entries = Tensor::Empty(DType::kF32, {batch, num_entries, entry_dim});
  kernels::RmsNorm(acts->pooled.view(), weights.norm.view(), eps, acts->entries.view());
  Tensor cos, sin;
  rope.Make(0, ratio, num_entries, &cos, &sin);
  for (int64_t b = 0; b < batch; ++b) {
    kernels::ApplyRope(acts->entries.view().Select(0, b).Reshape({num_entries, 1, entry_dim}),
                       cos.view(), sin.view(), /*inverse=*/false);
  }
}

}  // namespace v4rl::model
