#include "kernels/cuda/check.h"

#include <string>

#include "absl/strings/str_format.h"

namespace v4rl::kernels::cuda {

absl::Status CheckDeviceView(const char* op, const char* name, const core::TensorView& v,
                             std::initializer_list<core::DType> dtypes) {
  bool dtype_ok = false;
  std::string expected;
  for (core::DType d : dtypes) {
    dtype_ok |= v.dtype == d;
    expected += std::string(expected.empty() ? "" : "|") + core::DTypeName(d);
  }
  if (v.data == nullptr || v.device != core::Device::kCuda || !dtype_ok || !v.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s must be a contiguous %s device view, got %s%s", op, name, expected,
                        v.DebugString(), v.device == core::Device::kCuda ? "" : " on the host"));
  }
  return absl::OkStatus();
}

absl::Status CheckViewShape(const char* op, const char* name, const core::TensorView& v,
                            std::initializer_list<int64_t> shape) {
  if (v.SameShape(shape)) return absl::OkStatus();
  std::string dims;
  for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: %s has shape %s, expected [%s]", op, name, v.DebugString(), dims));
}

absl::Status CheckArg(bool ok, const char* op, const char* what) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("%s: %s", op, what));
}

}  // namespace v4rl::kernels::cuda
