// The token teams of the mHC coefficient kernels (the forward's in model_forward_misc.cu, the
// backward's in mhc_backward.cu): a team of kMhcTeam lanes works on one token's n x n Sinkhorn
// matrix, lane e on entry e (row e / n, column e % n; lanes past n·n idle but join every
// shuffle), two teams a warp, so a token's 20 iterations are a chain of shuffles rather than one
// thread's serial loops. Include only from .cu files.
#pragma once

#include <cmath>

namespace v4rl::kernels::cuda {

constexpr int kMhcMaxN = 4;  // kernels/cuda/mhc.h kMaxHcMult
constexpr int kMhcTeam = kMhcMaxN * kMhcMaxN;

// Σ (or max) of the team's v over entry e's line: its row (by_rows) or its column, in the line's
// order (the per-token serial loops' order, so sums repeat them bit for bit). team_base: the
// team's first lane in the warp.
template <bool kMax>
__device__ __forceinline__ float MhcLineReduce(float v, int e, int n, bool by_rows, int team_base) {
  const int line = by_rows ? e / n : e % n;
  float acc = kMax ? -INFINITY : 0.0f;
  for (int b = 0; b < n; ++b) {
    int source = by_rows ? line * n + b : b * n + line;
    source = source < n * n ? source : 0;  // idle lanes read any live entry
    const float other = __shfl_sync(0xffffffffu, v, team_base + source);
    acc = kMax ? fmaxf(acc, other) : acc + other;
  }
  return acc;
}

}  // namespace v4rl::kernels::cuda
