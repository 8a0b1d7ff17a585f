// Helpers for the gpu-labelled kernel tests: move CPU tensors to the device in bf16 or f32 (and
// the bf16-rounded f32 copy the CPU reference runs on), bring results back as f32, print the
// measured error next to the tolerance a test states, and build routed experts' row offsets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::testing {

// A device copy of a CPU tensor in `dtype` (f32 data rounded to nearest even for bf16; i32
// copied as is).
core::Tensor ToDevice(const core::Tensor& host, core::DType dtype);
// The CPU f32 tensor rounded to bf16 values (what a bf16 device copy holds), as f32.
core::Tensor RoundToBf16(const core::Tensor& host);
// A CPU copy of a device view: bf16 and f32 come back as f32, integers as they are.
core::Tensor ToHost(const core::TensorView& device);
// Compare + print "name: max abs err ..., cosine distance ..." and the tolerance.
::testing::AssertionResult CloseAndReport(const std::string& name, const core::TensorView& actual,
                                          const core::TensorView& expected,
                                          const Tolerance& tolerance);

// The offsets [0, c0, c0 + c1, ..] of experts with `counts` rows, on the host and as an i32 device
// tensor (the grouped GEMMs' `offsets`).
struct ExpertOffsets {
  std::vector<int64_t> host;
  core::Tensor device;
};
ExpertOffsets MakeExpertOffsets(const std::vector<int64_t>& counts);

}  // namespace v4rl::testing
