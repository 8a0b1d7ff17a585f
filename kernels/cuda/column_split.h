// Column slices of fused GEMM outputs copied out into contiguous buffers of their own. The
// production forward (model/forward_cuda.cc) runs the GEMMs that read one activation as one GEMM
// over row-concatenated weights; the consumers of some of the slices (compressor pooling, the
// indexer, the decode state's row copies, the positional gate bias) take contiguous rows. One
// launch moves every slice and applies on the way what those GEMMs' consumers applied after
// them: the compressor's positional gate bias and the indexer head weights' scale.
// Thread-safety: reentrant; the kernel goes to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// One slice: dst = src · scale (+ bias[p(r) mod ratio] per row r).
struct ColumnSlice {
  core::TensorView src;   // [M, W] bf16|f32 device row view (unit inner stride, any row stride)
  core::TensorView dst;   // [M, W] contiguous device view of src's dtype, not overlapping src
  core::TensorView bias;  // optional [ratio, W] f32 contiguous (f32 slices only)
  float scale = 1.0f;     // f32 slices only
};

inline constexpr int kMaxColumnSlices = 8;

// Every slice has the same M rows. Row r's position p(r) is positions[r] when positions ([M] i32
// contiguous device view) is given, else r mod seq_len (rows of whole sequences of seq_len
// tokens). bf16 slices are copied bit for bit; f32 ones are fl(fl(src · scale) + bias): the
// rounding of a GEMM's alpha epilogue followed by AddPositionBias / AddPositionBiasAt, so the
// result equals the separate GEMM's output plus those kernels. At most kMaxColumnSlices slices.
// InvalidArgument on a mismatch (naming the slice and the view).
absl::Status SplitColumns(absl::Span<const ColumnSlice> slices, const core::TensorView& positions,
                          int64_t seq_len);

}  // namespace v4rl::kernels::cuda
