// Decoding of stored weight formats into fp32 (reference precision), spec §6.4:
//  - f32 / bf16 / f16: exact conversion;
//  - FP8 e4m3 with one scale per 128 x 128 tile of the last two dims, W = fp8(q) · s;
//  - FP4 e2m1 packed two per byte (element 2c in the low nibble) in an I8/U8 tensor
//    [..., rows, cols / 2], with one scale per 32 elements [..., rows, cols / 32].
// Scales may be ue8m0 exponent bytes (F8_E8M0, or U8 holding the same bytes: 2^(b - 127),
// pitfall 13) or plain f32 / bf16 multipliers (transformers' weight_scale_inv).
// Thread-safety: pure functions.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace v4rl::model {

// Returns `stored` decoded to a contiguous f32 tensor of `logical_shape`. `scale` is required for
// FP8 and packed FP4 and must be undefined (data == nullptr) otherwise. `name` is used in
// messages. Errors (InvalidArgument): an FP8/FP4 tensor without a scale, a scale for a plain
// float tensor, shapes that do not fit the formats above, unsupported dtypes.
absl::StatusOr<core::Tensor> DecodeToF32(const core::TensorView& stored,
                                         const core::TensorView& scale,
                                         const core::Shape& logical_shape,
                                         const std::string& name);

}  // namespace v4rl::model
