// Helpers of the CUDA benches: random device tensors, random MoE routing and its expert offsets,
// mean time of a call, and the device's copy bandwidth (the HBM figure bandwidth-bound kernels are
// held to).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <numeric>
#include <utility>
#include <vector>

#include "bench/bench_common.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"

namespace v4rl::bench {

// A device tensor of N(0, stddev) values in `dtype` (bf16 or f32).
inline core::Tensor RandomDevice(core::DType dtype, const core::Shape& shape, uint64_t seed,
                                 float stddev) {
  namespace kc = kernels::cuda;
  core::Tensor host = core::Tensor::Empty(core::DType::kF32, shape);
  core::Rng(seed).FillNormal(host.view(), 0.0f, stddev);
  core::Tensor f32 = core::Tensor::Empty(core::DType::kF32, shape, kc::DeviceAllocator());
  Check(kc::Copy(host.view(), f32.view()), "upload");
  if (dtype == core::DType::kF32) return f32;
  core::Tensor out = core::Tensor::Empty(dtype, shape, kc::DeviceAllocator());
  Check(kc::F32ToBf16(f32.view(), out.view()), "convert");
  return out;
}

// Rows an expert gets when each of `tokens` tokens picks `picks` distinct experts of `experts`
// at random (seeded; a partial Fisher-Yates shuffle a token): the MoE benches' routing.
inline std::vector<int64_t> RandomExpertCounts(int64_t tokens, int64_t experts, int64_t picks,
                                               uint64_t seed) {
  std::vector<int64_t> counts(experts, 0);
  const core::Rng rng(seed);
  std::vector<int64_t> order(experts);
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(order.begin(), order.end(), 0);
    for (int64_t j = 0; j < picks; ++j) {
      const int64_t swap =
          j + static_cast<int64_t>(rng.UniformDouble(static_cast<uint64_t>(t * picks + j)) *
                                   (experts - j));
      std::swap(order[j], order[std::min(swap, experts - 1)]);
      ++counts[order[j]];
    }
  }
  return counts;
}

// Expert row offsets from per-expert row counts: host [E + 1] (prefix sums from 0) and the same as
// an i32 device tensor, the form the grouped GEMMs take.
struct ExpertOffsets {
  std::vector<int64_t> host;
  core::Tensor device;
};
inline ExpertOffsets ExpertOffsetsOf(const std::vector<int64_t>& counts) {
  namespace kc = kernels::cuda;
  ExpertOffsets offsets;
  offsets.host = {0};
  for (const int64_t c : counts) offsets.host.push_back(offsets.host.back() + c);
  const int64_t entries = static_cast<int64_t>(offsets.host.size());
  core::Tensor host = core::Tensor::Empty(core::DType::kI32, {entries});
  for (int64_t e = 0; e < entries; ++e) {
    host.data<int32_t>()[e] = static_cast<int32_t>(offsets.host[e]);
  }
  offsets.device = core::Tensor::Empty(core::DType::kI32, {entries}, kc::DeviceAllocator());
  Check(kc::Copy(host.view(), offsets.device.view()), "offsets");
  return offsets;
}

// Mean milliseconds per call over `iters` calls after 3 warm-up calls.
inline double TimeMs(int iters, const std::function<void()>& body) {
  for (int i = 0; i < 3; ++i) body();
  Check(kernels::cuda::Synchronize(), "sync");
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) body();
  Check(kernels::cuda::Synchronize(), "sync");
  return Seconds(start) * 1e3 / iters;
}

// (read + write) bytes / time of a 1 GiB device-to-device cudaMemcpy, best of 3.
inline double CopyBandwidthGbPerS() {
  const int64_t bytes = int64_t{1} << 30;
  namespace kc = kernels::cuda;
  core::Tensor a = core::Tensor::Empty(core::DType::kU8, {bytes}, kc::DeviceAllocator());
  core::Tensor b = core::Tensor::Empty(core::DType::kU8, {bytes}, kc::DeviceAllocator());
  Check(kc::Copy(a.view(), b.view()), "copy");
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    Check(kc::Synchronize(), "sync");
    const auto start = std::chrono::steady_clock::now();
    Check(kc::Copy(a.view(), b.view()), "copy");
    Check(kc::Synchronize(), "sync");
    best = std::max(best, 2.0 * bytes / Seconds(start) / 1e9);
  }
  return best;
}

}  // namespace v4rl::bench
