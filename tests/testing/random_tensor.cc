#include "tests/testing/random_tensor.h"

#include "core/rng.h"

namespace v4rl::testing {

core::Tensor RandomNormal(absl::Span<const int64_t> shape, uint64_t seed, float stddev) {
  core::Tensor tensor = core::Tensor::Empty(core::DType::kF32, shape);
  core::Rng(seed).FillNormal(tensor.view(), 0.0f, stddev);
  return tensor;
}

core::Tensor RandomUniform(absl::Span<const int64_t> shape, uint64_t seed, float low, float high) {
  core::Tensor tensor = core::Tensor::Empty(core::DType::kF32, shape);
  core::Rng(seed).FillUniform(tensor.view(), low, high);
  return tensor;
}

}  // namespace v4rl::testing
