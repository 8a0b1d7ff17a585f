#include "kernels/cpu/linear.h"

#include <algorithm>
#include <cstring>

#include "core/thread_pool.h"

namespace v4rl::kernels::cpu {
namespace {

// Eight fp32 lanes; GCC/Clang lower it to AVX2 or to pairs of SSE registers.
using Vec8 = float __attribute__((vector_size(32)));

inline Vec8 Load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Lane sum in a fixed pairwise order.
inline float Sum8(Vec8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// One dot product, in the order every path of this file uses.
__attribute__((target_clones("avx2", "default"))) float Dot(const float* a, const float* b,
                                                            int64_t k) {
  Vec8 acc = {};
  int64_t i = 0;
  // Lane-wise products over full 8-blocks of K.
  for (; i + 8 <= k; i += 8) acc += Load8(a + i) * Load8(b + i);
  float sum = Sum8(acc);
  // Tail elements in index order.
  for (; i < k; ++i) sum += a[i] * b[i];
  return sum;
}

// A 2 x 4 output tile: two rows of x against four rows of w, each x/w load reused 4/2 times.
// Identical per-element arithmetic to Dot.
__attribute__((target_clones("avx2", "default"))) void Tile2x4(const float* x0, const float* x1,
                                                               const float* const* w, int64_t k,
                                                               float* out0, float* out1) {
  Vec8 acc[2][4] = {};
  int64_t i = 0;
  // Lane-wise products over full 8-blocks of K for all eight outputs.
  for (; i + 8 <= k; i += 8) {
    const Vec8 a0 = Load8(x0 + i);
    const Vec8 a1 = Load8(x1 + i);
    for (int j = 0; j < 4; ++j) {
      const Vec8 b = Load8(w[j] + i);
      acc[0][j] += a0 * b;
      acc[1][j] += a1 * b;
    }
  }
  // Reduce lanes, then add the tail in index order.
  for (int j = 0; j < 4; ++j) {
    float s0 = Sum8(acc[0][j]);
    float s1 = Sum8(acc[1][j]);
    for (int64_t t = i; t < k; ++t) {
      s0 += x0[t] * w[j][t];
      s1 += x1[t] * w[j][t];
    }
    out0[j] = s0;
    out1[j] = s1;
  }
}

constexpr int64_t kRowsPerBlock = 32;  // x rows per task (multiple of the tile's 2)
constexpr int64_t kColsPerBlock = 64;  // w rows per task (multiple of the tile's 4)

}  // namespace

void LinearRef(const float* x, int64_t ldx, const float* w, int64_t ldw, float* out, int64_t ldo,
               int64_t m, int64_t n, int64_t k, core::ThreadPool* pool) {
  if (m == 0 || n == 0) return;
  const int64_t row_blocks = (m + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t col_blocks = (n + kColsPerBlock - 1) / kColsPerBlock;
  auto run = [&](int64_t task_begin, int64_t task_end) {
    // Each task owns one (row block, column block) rectangle of `out`.
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t r0 = (task / col_blocks) * kRowsPerBlock;
      const int64_t c0 = (task % col_blocks) * kColsPerBlock;
      const int64_t r1 = std::min(r0 + kRowsPerBlock, m);
      const int64_t c1 = std::min(c0 + kColsPerBlock, n);
      // Walk the rectangle in 2 x 4 tiles; leftover rows/columns fall back to single dots.
      for (int64_t c = c0; c < c1; c += 4) {
        const int64_t nc = std::min<int64_t>(4, c1 - c);
        int64_t r = r0;
        if (nc == 4) {
          const float* wr[4] = {w + c * ldw, w + (c + 1) * ldw, w + (c + 2) * ldw,
                                w + (c + 3) * ldw};
          for (; r + 2 <= r1; r += 2) {
            Tile2x4(x + r * ldx, x + (r + 1) * ldx, wr, k, out + r * ldo + c,
                    out + (r + 1) * ldo + c);
          }
        }
        for (; r < r1; ++r) {
          for (int64_t j = 0; j < nc; ++j) {
            out[r * ldo + c + j] = Dot(x + r * ldx, w + (c + j) * ldw, k);
          }
        }
      }
    }
  };
  const int64_t num_tasks = row_blocks * col_blocks;
  if (pool == nullptr) {
    run(0, num_tasks);
  } else {
    pool->ParallelFor(0, num_tasks, 1, run);
  }
}

}  // namespace v4rl::kernels::cpu
