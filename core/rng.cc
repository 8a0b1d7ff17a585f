#include "core/rng.h"

#include <cmath>

#include "core/thread_pool.h"

namespace v4rl::core {
namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// SplitMix64 finaliser: mixes (stream, id) into a new stream id.
uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

Rng Rng::Fork(uint64_t id) const { return Rng(seed_, Mix64(stream_ ^ Mix64(id + 1))); }

std::array<uint32_t, 4> Rng::Bits(uint64_t counter) const {
  // Philox-4x32-10 with counter = (counter, stream) and key = seed.
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream_), c3 = static_cast<uint32_t>(stream_ >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed_), k1 = static_cast<uint32_t>(seed_ >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return {c0, c1, c2, c3};
}

float Rng::Uniform(uint64_t counter) const {
  return static_cast<float>(Bits(counter)[0] >> 8) * (1.0f / 16777216.0f);
}

double Rng::UniformDouble(uint64_t counter) const {
  const auto bits = Bits(counter);
  const uint64_t combined = (static_cast<uint64_t>(bits[0]) << 21) ^ (bits[1] >> 11);
  return static_cast<double>(combined & ((uint64_t{1} << 53) - 1)) * (1.0 / 9007199254740992.0);
}

float Rng::Normal(uint64_t counter) const {
  const auto bits = Bits(counter);
  // u1 in (0, 1] so the log is finite.
  const double u1 = (static_cast<double>(bits[0]) + 1.0) / 4294967296.0;
  const double u2 = static_cast<double>(bits[1]) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

void Rng::FillUniform(const TensorView& out, float low, float high, ThreadPool* pool) const {
  V4RL_CHECK(out.dtype == DType::kF32 && out.is_contiguous() && out.device == Device::kCpu);
  float* values = out.data_as<float>();
  auto fill = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) values[i] = low + (high - low) * Uniform(i);
  };
  ParallelForOrInline(pool, 0, out.numel(), 1 << 14, fill);
}

void Rng::FillNormal(const TensorView& out, float mean, float stddev, ThreadPool* pool) const {
  V4RL_CHECK(out.dtype == DType::kF32 && out.is_contiguous() && out.device == Device::kCpu);
  float* values = out.data_as<float>();
  auto fill = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) values[i] = mean + stddev * Normal(i);
  };
  ParallelForOrInline(pool, 0, out.numel(), 1 << 14, fill);
}

}  // namespace v4rl::core
