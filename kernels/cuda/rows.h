// Row movement for the GPU decode state (model/decode_cuda.h): many small device-to-device copies
// in one launch (ring reads and writes, compressor rows, entries), and the compressor's
// positional gate bias for rows at arbitrary positions.
// Thread-safety: stateless; kernels go to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// One copy of `bytes` bytes between device addresses (POD).
struct RowCopy {
  const void* src = nullptr;
  void* dst = nullptr;
  int64_t bytes = 0;
};

// Runs the copies in as few launches as possible: copies are cut into 64 KiB pieces, one block
// per piece, 128 pieces per launch, the descriptors passed in the launch's parameters (no
// host-to-device transfer, no wait for earlier work). No copy's destination may overlap another
// copy's source or destination in the same call. Returns after queueing.
absl::Status BatchCopy(absl::Span<const RowCopy> copies);

// x[r, :] += bias[positions[r] mod ratio, :]. x: [rows, W] f32; bias: [ratio, W] f32;
// positions: [rows] i32; contiguous device views.
absl::Status AddPositionBiasAt(const core::TensorView& x, const core::TensorView& bias,
                               const core::TensorView& positions);

}  // namespace v4rl::kernels::cuda
