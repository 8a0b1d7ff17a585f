// Row-wise and elementwise CUDA ops of the forward pass in the `production` precision: bf16 (or
// f32) storage, fp32 arithmetic. Same math as kernels/cpu/elementwise.h and model/rope.h; the
// gpu tests in tests/kernels/cuda_elementwise_test.cc diff them on odd sizes.
// Every launcher validates its views (device, dtype, shape) and returns InvalidArgument on a
// mismatch, then queues one kernel on the launch stream (stream.h).
// Thread-safety: reentrant.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// out = x / sqrt(mean(x²) + eps) ⊙ weight, per row. x, out: [M, D] bf16|f32 row views (rank 2
// with a unit inner stride, or contiguous of any rank flattened to rows); out may be x.
// weight: [D] bf16|f32 contiguous, or optional (data == nullptr: unweighted).
absl::Status RmsNorm(const core::TensorView& x, const core::TensorView& weight, float eps,
                     const core::TensorView& out);

// RoPE tables on the device with model::RopeTable::Fill's arithmetic: the angle is
// float(position) · inv_freq[i] rounded to f32, its cos and sin evaluated in double and rounded
// to f32. inv_freq: [rope_dim / 2] f32 (model::RopeInvFreq, YaRN included); cos, sin:
// [count, rope_dim / 2] f32 for positions first, first + stride, ...
absl::Status RopeTableFill(const core::TensorView& inv_freq, int64_t first, int64_t stride,
                           const core::TensorView& cos, const core::TensorView& sin);
// The same tables at arbitrary positions: positions [count] i32 on the device, or a host span
// passed in the launch parameters (512 a launch: no upload, no wait for earlier work).
absl::Status RopeTableAt(const core::TensorView& inv_freq, const core::TensorView& positions,
                         const core::TensorView& cos, const core::TensorView& sin);
absl::Status RopeTableAt(const core::TensorView& inv_freq, absl::Span<const int32_t> positions,
                         const core::TensorView& cos, const core::TensorView& sin);
// Two tables at the same device positions in one launch (a decode step's main and compressed-layer
// tables): the bits of RopeTableAt(inv_freq, positions, cos, sin) and of RopeTableAt(inv_freq2,
// positions, cos2, sin2). Each triple is checked as RopeTableAt's (messages name the second one's
// views inv_freq2, cos2, sin2); both tables have positions.size(0) rows.
absl::Status RopeTablesAt(const core::TensorView& positions, const core::TensorView& inv_freq,
                          const core::TensorView& cos, const core::TensorView& sin,
                          const core::TensorView& inv_freq2, const core::TensorView& cos2,
                          const core::TensorView& sin2);

// RmsNorm(x, weight, eps, out) and then ApplyRope(out as [R / heads, heads, D], cos, sin,
// inverse = false) in one launch: the rows r·heads .. r·heads + heads - 1 of x, out ([R, D] as
// RmsNorm takes them; out contiguous) rotate their trailing rope_dim channels by row r of cos,
// sin ([R / heads, rope_dim / 2] f32). The same bits as the two calls (the normalised values are
// rounded to out's dtype before the rotation); rows that do not allow 8-wide access, or a rope
// part that does not start at a multiple of 8, take the two launches.
absl::Status RmsNormRope(const core::TensorView& x, const core::TensorView& weight, float eps,
                         const core::TensorView& cos, const core::TensorView& sin, int64_t heads,
                         const core::TensorView& out);

// Where RmsNormRope rounds the rope part for a bf16 out. kBeforeRotation: as above (the bits of
// RmsNorm into bf16, then ApplyRope on bf16). kAfterRotation: normalised and rotated in f32 and
// rounded once at the store, the bits of RmsNorm into f32, ApplyRope on f32, then F32ToBf16
// (the training forward's bf16 copies of q and kv, without the f32 tensor and the copy); it needs
// the 8-wide rows (x, out and weight 16-byte aligned, D and D - rope_dim multiples of 8) and
// returns InvalidArgument otherwise. The two are the same for an f32 out.
enum class RopeRounding { kBeforeRotation, kAfterRotation };
absl::Status RmsNormRope(const core::TensorView& x, const core::TensorView& weight, float eps,
                         const core::TensorView& cos, const core::TensorView& sin, int64_t heads,
                         const core::TensorView& out, RopeRounding rounding);

// In-place interleaved RoPE on the trailing 2·cos.size(1) channels of every head (spec §3.2).
// x: [M, heads, head_dim] bf16|f32 with a contiguous last dim; cos, sin: [M, rope_dim / 2] f32
// contiguous. inverse: conjugate rotation (the output de-rotation).
absl::Status ApplyRope(const core::TensorView& x, const core::TensorView& cos,
                       const core::TensorView& sin, bool inverse);

// out = ApplyRope(a copy of x, cos, sin, inverse) in one pass: x's values rotated in f32 and
// rounded once at out's store (for an f32 x the bits of Copy into f32, ApplyRope on f32, then
// F32ToBf16 into a bf16 out). x, out: contiguous [M, heads, head_dim] bf16|f32 device views of
// one shape, 16-byte aligned, head_dim and head_dim - rope_dim multiples of 8 (InvalidArgument
// otherwise); cos, sin: [M, rope_dim / 2] f32.
absl::Status RopeCopy(const core::TensorView& x, const core::TensorView& cos,
                      const core::TensorView& sin, bool inverse, const core::TensorView& out);

// out = silu(min(gate, limit)) · clamp(up, ±limit) (limit <= 0: no clamp). gate, up: [M, I]
// bf16|f32 row views; out: [M, I] bf16|f32 row view (may alias gate or up).
absl::Status SwiGluClamp(const core::TensorView& gate, const core::TensorView& up, float limit,
                         const core::TensorView& out);
// The same, also writing copy ([M, I] bf16 row view): out's values rounded once to bf16, the bits
// F32ToBf16 of an f32 out gives, without reading out back (an f32 activation kept for the
// backward and the bf16 operand of the next GEMM in one pass). An empty copy: the call above.
absl::Status SwiGluClamp(const core::TensorView& gate, const core::TensorView& up, float limit,
                         const core::TensorView& out, const core::TensorView& copy);

// Embedding rows copied into every residual stream: out[i, j, :] = table[ids[i], :] for j < n.
// table: [V, H] bf16|f32; ids: [N] i32 (every id in [0, V): the caller validated them);
// out: [N, n, H] bf16|f32. All contiguous device views.
absl::Status EmbedStreams(const core::TensorView& table, const core::TensorView& ids,
                          const core::TensorView& out);

// x[r, :] += bias[(r mod seq_len) mod ratio, :], the compressor's positional gate bias for rows
// of whole sequences of seq_len tokens. x: [rows, W] bf16|f32; bias: [ratio, W] f32; contiguous.
absl::Status AddPositionBias(const core::TensorView& x, const core::TensorView& bias,
                             int64_t seq_len);

}  // namespace v4rl::kernels::cuda
