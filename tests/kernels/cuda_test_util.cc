#include "tests/kernels/cuda_test_util.h"

#include <cstdio>

#include "kernels/cuda/device.h"

namespace v4rl::testing {

core::Tensor ToDevice(const core::Tensor& host, core::DType dtype) {
  core::Tensor staged = host;
  if (dtype == core::DType::kBF16) {
    V4RL_CHECK(host.dtype() == core::DType::kF32);
    staged = core::Tensor::Empty(core::DType::kBF16, host.view().shape_vector());
    for (int64_t i = 0; i < host.numel(); ++i) {
      staged.data<uint16_t>()[i] = core::FloatToBf16(host.data<float>()[i]);
    }
  } else {
    V4RL_CHECK(host.dtype() == dtype) << "ToDevice: " << host.view().DebugString();
  }
  core::Tensor device =
      core::Tensor::Empty(dtype, host.view().shape_vector(), kernels::cuda::DeviceAllocator());
  V4RL_CHECK(kernels::cuda::Copy(staged.view(), device.view()).ok());
  return device;
}

core::Tensor RoundToBf16(const core::Tensor& host) {
  core::Tensor out = core::Tensor::Empty(core::DType::kF32, host.view().shape_vector());
  for (int64_t i = 0; i < host.numel(); ++i) {
    out.data<float>()[i] = core::RoundToBf16(host.data<float>()[i]);
  }
  return out;
}

core::Tensor ToHost(const core::TensorView& device) {
  V4RL_CHECK(kernels::cuda::Synchronize().ok());
  core::Tensor staged = core::Tensor::Empty(device.dtype, device.shape_vector());
  V4RL_CHECK(kernels::cuda::Copy(device, staged.view()).ok());
  if (device.dtype == core::DType::kBF16) return core::ToFloat32(staged.view());
  return staged;
}

::testing::AssertionResult CloseAndReport(const std::string& name, const core::TensorView& actual,
                                          const core::TensorView& expected,
                                          const Tolerance& tolerance) {
  const CompareStats stats = Compare(actual, expected, tolerance);
  std::printf("[measured] %s: max abs err %.3g, max rel err %.3g, rel err by norm %.3g, cosine "
              "distance %.3g (tolerance atol %.3g + rtol %.3g·|ref|)\n",
              name.c_str(), stats.max_abs_error, stats.max_rel_error, stats.rel_error_by_norm,
              stats.cosine_distance, tolerance.atol, tolerance.rtol);
  return AllClose(actual, expected, tolerance);
}

ExpertOffsets MakeExpertOffsets(const std::vector<int64_t>& counts) {
  ExpertOffsets offsets{{0}, core::Tensor()};
  for (const int64_t c : counts) offsets.host.push_back(offsets.host.back() + c);
  core::Tensor host =
      core::Tensor::Empty(core::DType::kI32, {static_cast<int64_t>(offsets.host.size())});
  for (size_t e = 0; e < offsets.host.size(); ++e) {
    host.data<int32_t>()[e] = static_cast<int32_t>(offsets.host[e]);
  }
  offsets.device = ToDevice(host, core::DType::kI32);
  return offsets;
}

}  // namespace v4rl::testing
