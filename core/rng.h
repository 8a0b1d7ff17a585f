// Counter-based random numbers (Philox-4x32-10).
//
// Every value is a pure function of (seed, stream, counter): a kernel that draws value i for
// element i gets the same numbers whatever the thread count, chunking or batch order. Use one
// stream per purpose (e.g. per sequence for sampling) via Fork().
// Thread-safe: all methods are const.
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace v4rl::core {

class ThreadPool;

class Rng {
 public:
  explicit Rng(uint64_t seed, uint64_t stream = 0) : seed_(seed), stream_(stream) {}

  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }
  // A generator for a sub-purpose; same seed, stream derived from (stream, id).
  Rng Fork(uint64_t id) const;

  // Four random words for `counter`.
  std::array<uint32_t, 4> Bits(uint64_t counter) const;
  // Uniform in [0, 1) with 24 random bits.
  float Uniform(uint64_t counter) const;
  // Uniform in [0, 1) with 53 random bits.
  double UniformDouble(uint64_t counter) const;
  // Standard normal (Box-Muller on one counter's words).
  float Normal(uint64_t counter) const;

  // Fills a contiguous CPU f32 view: element i gets draw i.
  void FillUniform(const TensorView& out, float low, float high, ThreadPool* pool = nullptr) const;
  void FillNormal(const TensorView& out, float mean, float stddev,
                  ThreadPool* pool = nullptr) const;

 private:
  uint64_t seed_;
  uint64_t stream_;
};

}  // namespace v4rl::core
