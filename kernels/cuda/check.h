// Host-side argument checks shared by the CUDA launchers (no CUDA headers): each returns
// InvalidArgument naming the op, the argument, what it got and what was expected, so a launcher
// can validate every view before it touches the device.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

// `v` is a contiguous device view whose dtype is one of `dtypes`.
absl::Status CheckDeviceView(const char* op, const char* name, const core::TensorView& v,
                             std::initializer_list<core::DType> dtypes);
// `v` has exactly `shape`.
absl::Status CheckViewShape(const char* op, const char* name, const core::TensorView& v,
                            std::initializer_list<int64_t> shape);
// A plain condition with its message.
absl::Status CheckArg(bool ok, const char* op, const char* what);

// `v` as rows for the row-wise kernels: a bf16|f32 device view of rank 2 with a unit inner stride
// (any row stride), or a contiguous view of any rank flattened to rows of its last dimension.
struct RowView {
  void* data;
  bool bf16;
  int64_t rows, cols, ld;
};
absl::Status AsRows(const char* op, const char* name, const core::TensorView& v, RowView* rows);

// True for bf16 views; the kernels read and write bf16 or f32 through one flag.
inline bool IsBf16(const core::TensorView& v) { return v.dtype == core::DType::kBF16; }

}  // namespace v4rl::kernels::cuda
