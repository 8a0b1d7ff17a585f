// The FP8 / FP4 simulation of DeepSeek's official V4 inference code on the GPU (spec/model.md
// §6.4), in place and bit for bit as the CPU references in kernels/cpu/quant_sim.h:
//  - BlockQuantDequant: per row, power-of-two-scaled blocks over columns [0, width) rounded onto
//    E4M3 (activations before FP8/FP4 GEMMs: blocks of 128; the KV QAT: blocks of 64 over the
//    non-rope dims) or E2M1 (the indexer's queries and keys: blocks of 32); one warp per block.
//  - Hadamard: the normalised Walsh-Hadamard transform of rows of a power of two n in [4, 128]
//    (the indexer's rotate_activation before its FP4 rounding, n = 128 in V4); one warp per row,
//    butterflies by shuffles.
// x: [rows, cols] bf16|f32 device view with a unit inner stride (any row stride), or a contiguous
// view of any rank taken as rows of its last dimension. The dequantised values are exact in bf16.
// Thread-safety: reentrant; kernels go to the launch stream (stream.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/cpu/quant_sim.h"

namespace v4rl::kernels::cuda {

using cpu::SimFormat;

// 1 <= block <= 128; 0 <= width <= cols.
absl::Status BlockQuantDequant(const core::TensorView& x, int64_t width, int64_t block,
                               SimFormat format);

// Rows of n columns, n a power of two in [4, 128].
absl::Status Hadamard(const core::TensorView& x);

}  // namespace v4rl::kernels::cuda
