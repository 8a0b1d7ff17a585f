#include "model/compressor_decode.h"

#include <algorithm>
#include <cstring>

#include "kernels/ops.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

// Copies `rows` rows of `width` floats.
void CopyRows(const float* source, int64_t rows, int64_t width, float* destination) {
  std::memcpy(destination, source, rows * width * sizeof(float));
}

}  // namespace

void CompressorProject(const CompressorWeights& weights, int64_t ratio,
                       absl::Span<const DecodeSpan> spans, const core::TensorView& x,
                       Tensor* kv, Tensor* score) {
  const int64_t num_tokens = x.shape[0];
  const int64_t width = weights.wkv.size(0);
  *kv = Tensor::Empty(DType::kF32, {num_tokens, width});
  *score = Tensor::Empty(DType::kF32, {num_tokens, width});
  kernels::Linear(x, weights.wkv.view(), kv->view());
  kernels::Linear(x, weights.wgate.view(), score->view());
  // The gate of a token gets the bias of its slot in the window.
  const float* ape = weights.ape.data<float>();
  for (const DecodeSpan& span : spans) {
    for (int64_t i = 0; i < span.count; ++i) {
      const float* bias = ape + ((span.position + i) % ratio) * width;
      float* row = score->data<float>() + (span.row + i) * width;
      for (int64_t c = 0; c < width; ++c) row[c] += bias[c];
    }
  }
}

void CompressorAppend(const CompressorWeights& weights, int64_t ratio, bool overlap,
                      const RopeTable& rope, float eps, int64_t first, const core::TensorView& kv,
                      const core::TensorView& score, CompressorDecodeState* state,
                      const core::TensorView& entries) {
  const int64_t width = kv.shape[1];
  const int64_t entry_dim = overlap ? width / 2 : width;
  const int64_t num_new = kv.shape[0];
  const int64_t open_slot = overlap ? ratio : 0;  // state slot of the open window's first row

  // Work rows from the first window an entry still needs: the previous complete window (series
  // A, overlap only), the open window's rows so far, then the new rows.
  const int64_t open_window = first / ratio;
  const int64_t open_rows = first % ratio;
  const bool has_previous = overlap && open_window >= 1;
  const int64_t base_window = open_window - (has_previous ? 1 : 0);
  const int64_t lead = (has_previous ? ratio : 0) + open_rows;
  const int64_t rows = lead + num_new;
  Tensor work_kv = Tensor::Empty(DType::kF32, {rows, width});
  Tensor work_score = Tensor::Empty(DType::kF32, {rows, width});
  auto fill = [&](const Tensor& saved, const core::TensorView& fresh, const Tensor& work) {
    float* out = work.data<float>();
    if (has_previous) CopyRows(saved.data<float>(), ratio, width, out);
    CopyRows(saved.data<float>() + open_slot * width, open_rows, width,
             out + (lead - open_rows) * width);
    CopyRows(fresh.data_as<float>(), num_new, width, out + lead * width);
  };
  fill(state->kv, kv, work_kv);
  fill(state->score, score, work_score);

  // Pool the windows completed by the new rows; the first work window only feeds series A when
  // it is the previous window.
  const int64_t work_windows = rows / ratio;
  const int64_t first_entry = has_previous ? 1 : 0;
  const int64_t num_entries = work_windows - first_entry;
  if (num_entries > 0) {
    const core::TensorView out = entries.Slice(0, open_window, open_window + num_entries);
    kernels::CompressPool(work_kv.view().Slice(0, 0, work_windows * ratio),
                          work_score.view().Slice(0, 0, work_windows * ratio), ratio, overlap,
                          first_entry, out);
    // Normalise, then rotate entry w at position w · ratio.
    kernels::RmsNorm(out, weights.norm.view(), eps, out);
    Tensor cos, sin;
    rope.Make(open_window * ratio, ratio, num_entries, &cos, &sin);
    kernels::ApplyRope(out.Reshape({num_entries, 1, entry_dim}), cos.view(), sin.view(),
                       /*inverse=*/false);
  }

  // Keep what later entries need: the last complete window (overlap) and the open window's rows.
  const int64_t end = first + num_new;
  const int64_t end_window = end / ratio;
  auto row_of = [&](const Tensor& work, int64_t position) {
    return work.data<float>() + (position - base_window * ratio) * width;
  };
  auto keep = [&](const Tensor& work, const Tensor& saved) {
    if (overlap && end_window >= 1) {
      CopyRows(row_of(work, (end_window - 1) * ratio), ratio, width, saved.data<float>());
    }
    CopyRows(row_of(work, end_window * ratio), end % ratio, width,
             saved.data<float>() + open_slot * width);
  };
  keep(work_kv, state->kv);
  keep(work_score, state->score);
}

}  // namespace v4rl::model
