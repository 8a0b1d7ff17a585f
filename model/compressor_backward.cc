#include "model/compressor_backward.h"

#include "kernels/backward_ops.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

void CompressorBackward(const CompressorWeights& weights, int64_t ratio, bool overlap,
                        const RopeTable& rope, float eps, int64_t batch, int64_t seq_len,
                        const core::TensorView& x, const CompressorActivations& acts,
                        const Tensor& dentries, const core::TensorView& dx,
                        CompressorWeights* grads) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t width = weights.wkv.size(0);
  const int64_t num_entries = acts.entries.size(1);
  const int64_t entry_dim = acts.entries.size(2);
  if (num_entries == 0) return;

  // Entry w was rotated at position w · ratio: rotate its gradient back.
  Tensor cos, sin;
  rope.Make(0, ratio, num_entries, &cos, &sin);
  for (int64_t b = 0; b < batch; ++b) {
    kernels::ApplyRopeBackward(dentries.view().Select(0, b).Reshape({num_entries, 1, entry_dim}),
                               cos.view(), sin.view(), /*inverse=*/false);
  }
  Tensor dpooled = Tensor::Zeros(DType::kF32, {batch, num_entries, entry_dim});
  kernels::RmsNormBackward(acts.pooled.view(), weights.norm.view(), eps, dentries.view(),
                           dpooled.view(), grads->norm.view());

  // Gated pooling, one sequence at a time, into per-token value and score gradients.
  Tensor dkv = Tensor::Zeros(DType::kF32, {num_tokens, width});
  Tensor dscore = Tensor::Zeros(DType::kF32, {num_tokens, width});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = first + num_entries * ratio;
    kernels::CompressPoolBackward(acts.kv.view().Slice(0, first, last),
                                  acts.score.view().Slice(0, first, last), ratio, overlap,
                                  /*first_entry=*/0, dpooled.view().Select(0, b),
                                  dkv.view().Slice(0, first, last),
                                  dscore.view().Slice(0, first, last));
  }
  // The positional bias of slot j received the score gradient of every row in slot j.
  float* dape = grads->ape.data<float>();
  const float* ds = dscore.data<float>();
  for (int64_t row = 0; row < num_tokens; ++row) {
    float* bias = dape + ((row % seq_len) % ratio) * width;
    for (int64_t c = 0; c < width; ++c) bias[c] += ds[row * width + c];
  }
  kernels::LinearBackward(x, weights.wkv.view(), dkv.view(), dx, grads->wkv.view());
  kernels::LinearBackward(x, weights.wgate.view(), dscore.view(), dx, grads->wgate.view());
}

}  // namespace v4rl::model
