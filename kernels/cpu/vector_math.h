// Short fp32 vector primitives for the CPU references' inner loops (attention scores and value
// sums, indexer scores): 8-lane partial sums reduced in a fixed order, so a result depends only
// on its inputs, never on the thread or tile that computes it.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

namespace v4rl::kernels::cpu {

// Σ_i a[i]·b[i]: lane-wise partial sums over 8-blocks, summed pairwise, then the tail in order.
float DotF32(const float* a, const float* b, int64_t n);

// y[i] += alpha · x[i] for i < n (x and y must not overlap).
void AxpyF32(float alpha, const float* x, float* y, int64_t n);

}  // namespace v4rl::kernels::cpu
