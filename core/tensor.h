// TensorView (a non-owning, trivially copyable description of strided data) and Tensor (owns its
// buffer through a shared pointer and exposes a view).
//
// A TensorView is all a kernel sees (DESIGN.md §3): {data, dtype, device, rank, shape, strides}.
// Strides count elements, not bytes. For kF4E2M1 the shape counts fp4 elements and the last
// dimension must be contiguous and even (two elements per byte).
// Thread-safety: views are values; concurrent writes to the same data are the caller's business.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "core/allocator.h"
#include "core/dtype.h"
#include "core/logging.h"

namespace v4rl::core {

inline constexpr int kMaxRank = 6;

using Shape = std::vector<int64_t>;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Device device = Device::kCpu;
  int rank = 0;
  int64_t shape[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};

  // A contiguous (row-major) view of `data` with `shape`.
  static TensorView Contiguous(void* data, DType dtype, absl::Span<const int64_t> shape,
                               Device device = Device::kCpu);

  int64_t numel() const;
  // Size of dimension `dim`; negative dims count from the back.
  int64_t size(int dim) const { return shape[NormalizeDim(dim)]; }
  int64_t stride(int dim) const { return strides[NormalizeDim(dim)]; }
  bool is_contiguous() const;
  // Bytes spanned by a contiguous view.
  int64_t nbytes() const { return DTypeBytes(dtype, numel()); }
  Shape shape_vector() const { return Shape(shape, shape + rank); }
  // "[2, 3, 4] f32".
  std::string DebugString() const;
  bool SameShape(absl::Span<const int64_t> other) const;

  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data);
  }

  // Views that share the data. CHECK-fail on out-of-range arguments (caller bugs).
  TensorView Slice(int dim, int64_t start, int64_t stop) const;  // [start, stop) along dim
  TensorView Select(int dim, int64_t index) const;               // drops dim
  TensorView Reshape(absl::Span<const int64_t> new_shape) const;  // contiguous views only
  TensorView Transpose(int dim0, int dim1) const;

  int NormalizeDim(int dim) const {
    const int d = dim < 0 ? dim + rank : dim;
    V4RL_CHECK(d >= 0 && d < rank) << "dim " << dim << " out of range for rank " << rank;
    return d;
  }
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised contiguous tensor from `allocator` (the CPU allocator by default).
  static Tensor Empty(DType dtype, absl::Span<const int64_t> shape,
                      Allocator* allocator = CpuAllocator());
  static Tensor Zeros(DType dtype, absl::Span<const int64_t> shape,
                      Allocator* allocator = CpuAllocator());
  // CPU f32 tensor holding `values` (size must equal the product of `shape`).
  static Tensor FromFloats(absl::Span<const int64_t> shape, absl::Span<const float> values);
  // Deep copy into a contiguous CPU tensor.
  static Tensor CopyOf(const TensorView& source);

  const TensorView& view() const { return view_; }
  TensorView& mutable_view() { return view_; }
  bool defined() const { return buffer_ != nullptr; }
  DType dtype() const { return view_.dtype; }
  int rank() const { return view_.rank; }
  int64_t size(int dim) const { return view_.size(dim); }
  int64_t numel() const { return view_.numel(); }
  template <typename T>
  T* data() const {
    return view_.data_as<T>();
  }
  // Element access for f32 CPU tensors (tests, small loops).
  std::vector<float> ToFloatVector() const;

 private:
  std::shared_ptr<void> buffer_;
  TensorView view_;
};

// Copies `source` into `destination` (same dtype and shape, CPU, any strides).
void CopyTensor(const TensorView& source, const TensorView& destination);
// Converts any floating CPU view to a new contiguous f32 tensor (exact for every input dtype).
Tensor ToFloat32(const TensorView& source);

}  // namespace v4rl::core
