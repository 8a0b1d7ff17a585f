// Element-type conversion kernels on the GPU (f32 <-> bf16, round to nearest even), with the
// same results as core::FloatToBf16 / core::Bf16ToFloat. Launchers take POD params and return
// a Status; inputs and outputs are contiguous device views (F32ToBf16Rows: row views in).
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// out [N] bf16 (device) <- in [N] f32 (device).
absl::Status F32ToBf16(const core::TensorView& in, const core::TensorView& out);
// out [M, K] bf16 contiguous (device) <- in [M, K] f32 device row view (row stride >= K): the
// operand copies of strided GEMM inputs (model/backward_cuda_impl.h Run under bf16 products).
absl::Status F32ToBf16Rows(const core::TensorView& in, const core::TensorView& out);
// out [N] f32 (device) <- in [N] bf16 (device).
absl::Status Bf16ToF32(const core::TensorView& in, const core::TensorView& out);

}  // namespace v4rl::kernels::cuda
