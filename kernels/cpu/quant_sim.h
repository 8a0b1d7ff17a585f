// The quantisation simulation of DeepSeek's official V4 inference code (spec/model.md §6.4), as
// fp32 reference loops for the CUDA `production` path's FP8 simulation (kernels/cuda/quant_sim.h):
//  - BlockQuantDequant: per row, blocks of `block` columns over [0, width): amax = max(|x|, floor),
//    scale s = 2^ceil(log2(amax / max_code)) (ue8m0), x <- round(clamp(x / s, ±max_code)) · s with
//    round-to-nearest-even onto FP8 E4M3 (max 448, floor 1e-4: activations before every FP8/FP4
//    GEMM in blocks of 128, the KV QAT in blocks of 64) or FP4 E2M1 (max 6, floor 6·2^-126: the
//    indexer's queries and keys in blocks of 32). Columns from `width` on are untouched.
//  - Hadamard: the normalised Walsh-Hadamard transform x <- x · H_n / sqrt(n) (Sylvester order)
//    of every n-wide row, n a power of two (the indexer's rotate_activation, n = 128), as
//    log2(n) butterfly stages of (a + b, a - b) then one scaling.
// The reference precision never calls these (it simulates nothing); they define the CUDA results.
// Thread-safety: pure functions on caller memory.
#pragma once

#include <cstdint>

namespace v4rl::kernels::cpu {

enum class SimFormat { kFp8E4M3, kFp4E2M1 };

// x: rows of `cols` floats at stride ld (cols >= width).
void BlockQuantDequantRef(float* x, int64_t rows, int64_t ld, int64_t width, int64_t block,
                          SimFormat format);

// x: rows of n floats at stride ld; n a power of two.
void HadamardRef(float* x, int64_t rows, int64_t ld, int64_t n);

}  // namespace v4rl::kernels::cpu
