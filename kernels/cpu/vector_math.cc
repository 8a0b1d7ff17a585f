#include "kernels/cpu/vector_math.h"

#include <cstring>

namespace v4rl::kernels::cpu {
namespace {

using Vec8 = float __attribute__((vector_size(32)));

inline Vec8 Load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

}  // namespace

__attribute__((target_clones("avx2", "default"))) float DotF32(const float* a, const float* b,
                                                               int64_t n) {
  Vec8 acc = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc += Load8(a + i) * Load8(b + i);
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

__attribute__((target_clones("avx2", "default"))) void AxpyF32(float alpha, const float* x,
                                                               float* y, int64_t n) {
  const Vec8 a = {alpha, alpha, alpha, alpha, alpha, alpha, alpha, alpha};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const Vec8 v = Load8(y + i) + a * Load8(x + i);
    std::memcpy(y + i, &v, sizeof(v));
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace v4rl::kernels::cpu
