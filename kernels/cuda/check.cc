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

absl::Status AsRows(const char* op, const char* name, const core::TensorView& v, RowView* rows) {
  const bool dtype_ok = v.dtype == core::DType::kBF16 || v.dtype == core::DType::kF32;
  if (v.device != core::Device::kCuda || !dtype_ok || v.rank < 1 || v.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %s must be a bf16|f32 device view, got %s", op, name, v.DebugString()));
  }
  const int64_t cols = v.shape[v.rank - 1];
  if (v.rank == 2 && v.strides[1] == 1) {
    *rows = {v.data, IsBf16(v), v.shape[0], cols, v.strides[0]};
    return absl::OkStatus();
  }
  if (!v.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %s must be a row view or contiguous, got %s", op, name, v.DebugString()));
  }
  *rows = {v.data, IsBf16(v), cols == 0 ? 0 : v.numel() / cols, cols, cols};
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
