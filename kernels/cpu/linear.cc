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

// Tail of one output: lanes reduced, then the K % 8 remaining products in index order.
inline float Finish(Vec8 acc, const float* a, const float* b, int64_t from, int64_t k) {
  float sum = Sum8(acc);
  for (int64_t t = from; t < k; ++t) sum += a[t] * b[t];
  return sum;
}

// A 2 x 4 output tile: two rows of x against four rows of w, each x/w load reused 4/2 times.
// Eight named accumulators stay in registers; per-element arithmetic is identical to Dot.
__attribute__((target_clones("avx2", "default"))) void Tile2x4(const float* x0, const float* x1,
                                                               const float* w0, const float* w1,
                                                               const float* w2, const float* w3,
                                                               int64_t k, float* out0,
                                                               float* out1) {
  Vec8 a00 = {}, a01 = {}, a02 = {}, a03 = {}, a10 = {}, a11 = {}, a12 = {}, a13 = {};
  int64_t i = 0;
  // Lane-wise products over full 8-blocks of K for all eight outputs.
  for (; i + 8 <= k; i += 8) {
    const Vec8 r0 = Load8(x0 + i), r1 = Load8(x1 + i);
    const Vec8 c0 = Load8(w0 + i), c1 = Load8(w1 + i), c2 = Load8(w2 + i), c3 = Load8(w3 + i);
    a00 += r0 * c0;
    a01 += r0 * c1;
    a02 += r0 * c2;
    a03 += r0 * c3;
    a10 += r1 * c0;
    a11 += r1 * c1;
    a12 += r1 * c2;
    a13 += r1 * c3;
  }
  out0[0] = Finish(a00, x0, w0, i, k);
  out0[1] = Finish(a01, x0, w1, i, k);
  out0[2] = Finish(a02, x0, w2, i, k);
  out0[3] = Finish(a03, x0, w3, i, k);
  out1[0] = Finish(a10, x1, w0, i, k);
  out1[1] = Finish(a11, x1, w1, i, k);
  out1[2] = Finish(a12, x1, w2, i, k);
  out1[3] = Finish(a13, x1, w3, i, k);
}

constexpr int64_t kRowsPerBlock = 32;  // x rows per task (multiple of the tile's 2)
constexpr int64_t kColsPerBlock = 64;  // w rows per task (multiple of the tile's 4)

// The rectangle rows [r0, r1) x columns [c0, c1) of `out`, fp32: 2 x 4 tiles.
void ComputeRectangle(const float* x, int64_t ldx, const float* w, int64_t ldw, float* out,
                      int64_t ldo, int64_t k, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  // Walk the rectangle in 2 x 4 tiles; leftover rows/columns fall back to single dots.
  for (int64_t c = c0; c < c1; c += 4) {
    const int64_t nc = std::min<int64_t>(4, c1 - c);
    int64_t r = r0;
    if (nc == 4) {
      for (; r + 2 <= r1; r += 2) {
        Tile2x4(x + r * ldx, x + (r + 1) * ldx, w + c * ldw, w + (c + 1) * ldw, w + (c + 2) * ldw,
                w + (c + 3) * ldw, k, out + r * ldo + c, out + (r + 1) * ldo + c);
      }
    }
    for (; r < r1; ++r) {
      for (int64_t j = 0; j < nc; ++j) {
        out[r * ldo + c + j] = Dot(x + r * ldx, w + (c + j) * ldw, k);
      }
    }
  }
}

// Other element types (double for finite-difference checks): plain dots in index order.
template <typename T>
void ComputeRectangle(const T* x, int64_t ldx, const T* w, int64_t ldw, T* out, int64_t ldo,
                      int64_t k, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      T sum = 0;
      for (int64_t i = 0; i < k; ++i) sum += x[r * ldx + i] * w[c * ldw + i];
      out[r * ldo + c] = sum;
    }
  }
}

}  // namespace

template <typename T>
void LinearRef(const T* x, int64_t ldx, const T* w, int64_t ldw, T* out, int64_t ldo, int64_t m,
               int64_t n, int64_t k, core::ThreadPool* pool) {
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
      ComputeRectangle(x, ldx, w, ldw, out, ldo, k, r0, r1, c0, c1);
    }
  };
  const int64_t num_tasks = row_blocks * col_blocks;
  core::ParallelForOrInline(pool, 0, num_tasks, 1, run);
}

template void LinearRef<float>(const float*, int64_t, const float*, int64_t, float*, int64_t,
                               int64_t, int64_t, int64_t, core::ThreadPool*);
template void LinearRef<double>(const double*, int64_t, const double*, int64_t, double*, int64_t,
                                int64_t, int64_t, int64_t, core::ThreadPool*);

}  // namespace v4rl::kernels::cpu
