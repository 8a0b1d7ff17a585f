#include "kernels/op_checks.h"

#include <string>

namespace v4rl::kernels::internal {

void CheckCpuF32(const char* op, const char* name, const TensorView& v) {
  V4RL_CHECK(v.dtype == core::DType::kF32)
      << op << ": " << name << " must be f32, got " << v.DebugString();
  V4RL_CHECK(v.device == core::Device::kCpu)
      << op << ": " << name << " is on a device without a kernel for this op yet";
}

void CheckContiguousF32(const char* op, const char* name, const TensorView& v) {
  CheckCpuF32(op, name, v);
  V4RL_CHECK(v.is_contiguous()) << op << ": " << name << " must be contiguous, got "
                                << v.DebugString();
}

void CheckShape(const char* op, const char* name, const TensorView& v,
                std::initializer_list<int64_t> shape) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + " ";
  V4RL_CHECK(v.SameShape(shape)) << op << ": " << name << " has shape " << v.DebugString()
                                 << ", expected dims " << dims;
}

Rows AsRows(const char* op, const char* name, const TensorView& v) {
  CheckCpuF32(op, name, v);
  V4RL_CHECK_GE(v.rank, 1) << op << ": " << name;
  if (v.rank == 2 && v.strides[1] == 1) {
    return {v.data_as<float>(), v.shape[0], v.shape[1], v.strides[0]};
  }
  V4RL_CHECK(v.is_contiguous()) << op << ": " << name
                                << " must be a row view (rank 2, unit inner stride) or "
                                   "contiguous, got "
                                << v.DebugString();
  const int64_t cols = v.shape[v.rank - 1];
  const int64_t rows = cols == 0 ? 0 : v.numel() / cols;
  return {v.data_as<float>(), rows, cols, cols};
}

}  // namespace v4rl::kernels::internal
