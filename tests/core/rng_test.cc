// Rng: values depend only on (seed, stream, counter), never on threads; rough distribution checks.
#include "core/rng.h"

#include <cmath>

#include "core/thread_pool.h"
#include "gtest/gtest.h"

namespace v4rl::core {
namespace {

TEST(Rng, SameCounterSameValueDifferentStreamsDiffer) {
  Rng a(42), b(42);
  EXPECT_EQ(a.Bits(5), b.Bits(5));
  EXPECT_NE(a.Bits(5), a.Bits(6));
  EXPECT_NE(a.Fork(1).Bits(5), a.Fork(2).Bits(5));
  EXPECT_NE(Rng(42).Bits(0), Rng(43).Bits(0));
}

TEST(Rng, FillIsIndependentOfThreadCount) {
  Tensor serial = Tensor::Empty(DType::kF32, {10000});
  Tensor parallel = Tensor::Empty(DType::kF32, {10000});
  ThreadPool pool(4);
  Rng(7).FillNormal(serial.view(), 0, 1);
  Rng(7).FillNormal(parallel.view(), 0, 1, &pool);
  EXPECT_EQ(serial.ToFloatVector(), parallel.ToFloatVector());
}

TEST(Rng, MomentsAreRoughlyRight) {
  Rng rng(1);
  double sum = 0, sum_sq = 0, uniform_sum = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double x = rng.Normal(i);
    sum += x;
    sum_sq += x * x;
    const double u = rng.Uniform(i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    uniform_sum += u;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.02);
  EXPECT_NEAR(uniform_sum / n, 0.5, 0.005);
}

}  // namespace
}  // namespace v4rl::core
