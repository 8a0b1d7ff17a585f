// Finite-difference gradient checks in float64 for the backward passes (DESIGN.md §3).
//
//   std::vector<double> x = ...;
//   auto loss = [&](const std::vector<double>& z) { ...forward<double>..., return Σ g·out; };
//   EXPECT_TRUE(GradientMatches("dx", analytic, NumericalGradient(loss, x)));
//
// NumericalGradient perturbs one coordinate at a time (central differences, step h); callers
// keep shapes tiny. Header-only. Thread-safety: pure functions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"

namespace v4rl::testing {

// Central difference (f(x + h·e_i) - f(x - h·e_i)) / 2h for every coordinate i.
template <typename F>
std::vector<double> NumericalGradient(F&& f, std::vector<double> x, double h = 1e-6) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = f(x);
    x[i] = saved - h;
    const double minus = f(x);
    x[i] = saved;
    grad[i] = (plus - minus) / (2 * h);
  }
  return grad;
}

// ||actual - expected|| / ||expected|| (0 when both are zero).
inline double RelativeErrorByNorm(const std::vector<double>& actual,
                                  const std::vector<double>& expected) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < actual.size() && i < expected.size(); ++i) {
    diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
    norm += expected[i] * expected[i];
  }
  if (actual.size() != expected.size()) return INFINITY;
  if (norm == 0) return diff == 0 ? 0 : INFINITY;
  return std::sqrt(diff / norm);
}

// Passes when RelativeErrorByNorm(analytic, numeric) <= bound (the 1e-6 of DESIGN.md §3). Prints
// "[fd] what: error" either way, so a run reports each check's margin.
inline ::testing::AssertionResult GradientMatches(const char* what,
                                                  const std::vector<double>& analytic,
                                                  const std::vector<double>& numeric,
                                                  double bound = 1e-6) {
  const double error = RelativeErrorByNorm(analytic, numeric);
  std::printf("[fd] %-10s relative error by norm %.3e\n", what, error);
  if (error <= bound) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": relative error by norm " << error << " > " << bound;
}

// n values N(0, stddev²) from core::Rng(seed), as doubles.
inline std::vector<double> RandomDoubles(int64_t n, uint64_t seed, double stddev = 1.0) {
  const core::Rng rng(seed);
  std::vector<double> values(n);
  for (int64_t i = 0; i < n; ++i) values[i] = stddev * rng.Normal(i);
  return values;
}

// Σ_i a[i]·b[i] over a's size: the scalar objective Σ upstream ⊙ output of a check.
inline double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace v4rl::testing
