// Seeded random tensors for tests: the same seed gives the same values on every machine.
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "core/tensor.h"

namespace v4rl::testing {

// f32 CPU tensor with N(0, stddev) entries drawn from core::Rng(seed).
core::Tensor RandomNormal(absl::Span<const int64_t> shape, uint64_t seed, float stddev = 1.0f);
// f32 CPU tensor uniform in [low, high).
core::Tensor RandomUniform(absl::Span<const int64_t> shape, uint64_t seed, float low = -1.0f,
                           float high = 1.0f);

}  // namespace v4rl::testing
