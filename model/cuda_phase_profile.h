// Where a CUDA step's time goes, by phase: the decode step (model/decode_cuda.cc), the prefill
// (model/forward_cuda.cc) and the fp32 training passes (model/forward_cuda_reference.cc,
// model/backward_cuda.cc) call Mark after each phase. Off unless V4RL_CUDA_PROFILE is set.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cuda/device.h"

namespace v4rl::model::cuda_internal {

// Diagnostics: with V4RL_CUDA_PROFILE=1 in the environment, Mark(name) waits for the device and
// adds the time since the previous mark to `name`; Report prints the sums to stderr and clears
// them (CudaDecoder::Step calls it per step). Serialises host and device: only for finding where
// a step's time goes. V4RL_CUDA_PROFILE=host: the same without waiting, i.e. the host's own time
// per phase (launches, allocations, item tables). Disabled: Mark is a branch.
struct PhaseProfile {
  bool enabled = false;
  bool wait_for_device = true;
  std::chrono::steady_clock::time_point last;
  std::vector<std::pair<std::string, double>> ms;  // first-mark order

  PhaseProfile() {
    const char* env = std::getenv("V4RL_CUDA_PROFILE");
    const std::string mode = env == nullptr ? "" : env;
    enabled = mode == "1" || mode == "host";
    wait_for_device = mode == "1";
  }
  void Mark(const char* name) {
    if (!enabled) return;
    if (wait_for_device) (void)kernels::cuda::Synchronize();
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double, std::milli>(now - last).count();
    last = now;
    for (auto& [key, value] : ms) {
      if (key == name) {
        value += elapsed;
        return;
      }
    }
    ms.emplace_back(name, elapsed);
  }
  void Start() {
    if (!enabled) return;
    if (wait_for_device) (void)kernels::cuda::Synchronize();
    last = std::chrono::steady_clock::now();
  }
  void Report(const char* what, int64_t tokens) {
    if (!enabled) return;
    std::string line =
        absl::StrFormat("[profile%s] %s %d tokens:", wait_for_device ? "" : " host", what, tokens);
    double total = 0;
    for (const auto& [key, value] : ms) {
      absl::StrAppendFormat(&line, " %s %.3f", key, value);
      total += value;
    }
    std::fprintf(stderr, "%s | total %.3f ms\n", line.c_str(), total);
    ms.clear();
  }
};

}  // namespace v4rl::model::cuda_internal
