#include "core/tensor.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace v4rl::core {

TensorView TensorView::Contiguous(void* data, DType dtype, absl::Span<const int64_t> shape,
                                  Device device) {
  V4RL_CHECK_LE(static_cast<int>(shape.size()), kMaxRank);
  TensorView view;
  view.data = data;
  view.dtype = dtype;
  view.device = device;
  view.rank = static_cast<int>(shape.size());
  int64_t stride = 1;
  for (int d = view.rank - 1; d >= 0; --d) {
    V4RL_CHECK_GE(shape[d], 0) << "negative dimension";
    view.shape[d] = shape[d];
    view.strides[d] = stride;
    stride *= shape[d];
  }
  return view;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

std::string TensorView::DebugString() const {
  return absl::StrCat("[", absl::StrJoin(shape, shape + rank, ", "), "] ", DTypeName(dtype));
}

bool TensorView::SameShape(absl::Span<const int64_t> other) const {
  if (static_cast<int>(other.size()) != rank) return false;
  for (int d = 0; d < rank; ++d) {
    if (shape[d] != other[d]) return false;
  }
  return true;
}

TensorView TensorView::Slice(int dim, int64_t start, int64_t stop) const {
  const int d = NormalizeDim(dim);
  V4RL_CHECK(0 <= start && start <= stop && stop <= shape[d])
      << "slice [" << start << ", " << stop << ") of dim " << d << " with size " << shape[d];
  V4RL_CHECK(dtype != DType::kF4E2M1 || d != rank - 1 || start % 2 == 0)
      << "fp4 slices of the last dim must start at an even element";
  TensorView view = *this;
  view.data = static_cast<char*>(data) + DTypeBytes(dtype, start * strides[d]);
  view.shape[d] = stop - start;
  return view;
}

TensorView TensorView::Select(int dim, int64_t index) const {
  const int d = NormalizeDim(dim);
  TensorView view = Slice(d, index, index + 1);
  for (int i = d; i + 1 < rank; ++i) {
    view.shape[i] = view.shape[i + 1];
    view.strides[i] = view.strides[i + 1];
  }
  --view.rank;
  return view;
}

TensorView TensorView::Reshape(absl::Span<const int64_t> new_shape) const {
  V4RL_CHECK(is_contiguous()) << "Reshape of a non-contiguous view " << DebugString();
  TensorView view = Contiguous(data, dtype, new_shape, device);
  V4RL_CHECK_EQ(view.numel(), numel()) << "Reshape " << DebugString() << " to "
                                       << view.DebugString();
  return view;
}

TensorView TensorView::Transpose(int dim0, int dim1) const {
  const int a = NormalizeDim(dim0);
  const int b = NormalizeDim(dim1);
  TensorView view = *this;
  std::swap(view.shape[a], view.shape[b]);
  std::swap(view.strides[a], view.strides[b]);
  return view;
}

Tensor Tensor::Empty(DType dtype, absl::Span<const int64_t> shape, Allocator* allocator) {
  int64_t numel = 1;
  for (int64_t dim : shape) numel *= dim;
  Tensor tensor;
  void* data = allocator->Allocate(static_cast<size_t>(DTypeBytes(dtype, numel)));
  tensor.buffer_ = std::shared_ptr<void>(data, [allocator](void* p) { allocator->Free(p); });
  tensor.view_ = TensorView::Contiguous(data, dtype, shape, allocator->device());
  return tensor;
}

Tensor Tensor::Zeros(DType dtype, absl::Span<const int64_t> shape, Allocator* allocator) {
  V4RL_CHECK(allocator->device() == Device::kCpu) << "Tensor::Zeros allocates on the CPU only";
  Tensor tensor = Empty(dtype, shape, allocator);
  std::memset(tensor.view_.data, 0, tensor.view_.nbytes());
  return tensor;
}

Tensor Tensor::FromFloats(absl::Span<const int64_t> shape, absl::Span<const float> values) {
  Tensor tensor = Empty(DType::kF32, shape);
  V4RL_CHECK_EQ(tensor.numel(), static_cast<int64_t>(values.size()));
  std::memcpy(tensor.view_.data, values.data(), values.size() * sizeof(float));
  return tensor;
}

Tensor Tensor::CopyOf(const TensorView& source) {
  Tensor tensor = Empty(source.dtype, source.shape_vector());
  CopyTensor(source, tensor.view_);
  return tensor;
}

std::vector<float> Tensor::ToFloatVector() const {
  const Tensor f32 = ToFloat32(view_);
  const float* values = f32.data<float>();
  return std::vector<float>(values, values + f32.numel());
}

namespace {

// Calls fn(source_offset, destination_offset) for every element, in row-major order; offsets
// count elements.
template <typename Fn>
void ForEachElement(const TensorView& source, const TensorView& destination, Fn fn) {
  const int64_t numel = source.numel();
  int64_t index[kMaxRank] = {};
  for (int64_t i = 0; i < numel; ++i) {
    int64_t src = 0, dst = 0;
    for (int d = 0; d < source.rank; ++d) {
      src += index[d] * source.strides[d];
      dst += index[d] * destination.strides[d];
    }
    fn(src, dst);
    for (int d = source.rank - 1; d >= 0; --d) {
      if (++index[d] < source.shape[d]) break;
      index[d] = 0;
    }
  }
}

}  // namespace

void CopyTensor(const TensorView& source, const TensorView& destination) {
  V4RL_CHECK(source.dtype == destination.dtype) << "CopyTensor dtype mismatch";
  V4RL_CHECK(source.SameShape(destination.shape_vector())) << "CopyTensor shape mismatch";
  V4RL_CHECK(source.device == Device::kCpu && destination.device == Device::kCpu);
  if (source.is_contiguous() && destination.is_contiguous()) {
    std::memmove(destination.data, source.data, source.nbytes());
    return;
  }
  V4RL_CHECK(source.dtype != DType::kF4E2M1) << "strided copies of packed fp4 are not supported";
  const int64_t element_bytes = DTypeBytes(source.dtype, 1);
  const auto* src = static_cast<const char*>(source.data);
  auto* dst = static_cast<char*>(destination.data);
  ForEachElement(source, destination, [&](int64_t s, int64_t d) {
    std::memcpy(dst + d * element_bytes, src + s * element_bytes, element_bytes);
  });
}

Tensor ToFloat32(const TensorView& source) {
  V4RL_CHECK(source.device == Device::kCpu);
  Tensor result = Tensor::Empty(DType::kF32, source.shape_vector());
  float* out = result.data<float>();
  if (source.dtype == DType::kF4E2M1) {
    V4RL_CHECK(source.is_contiguous()) << "ToFloat32 of packed fp4 needs a contiguous view";
    for (int64_t i = 0; i < source.numel(); ++i) out[i] = LoadAsFloat(source.data, source.dtype, i);
    return result;
  }
  ForEachElement(source, result.view(), [&](int64_t s, int64_t d) {
    out[d] = LoadAsFloat(source.data, source.dtype, s);
  });
  return result;
}

}  // namespace v4rl::core
