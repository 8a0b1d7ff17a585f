#include "model/quant.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace v4rl::model {
namespace {

using core::DType;

std::string ShapeString(const core::Shape& shape) {
  return "[" + absl::StrJoin(shape, ", ") + "]";
}

int64_t NumElements(const core::Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Scale element i as a multiplier.
float ScaleAt(const core::TensorView& scale, int64_t i) {
  switch (scale.dtype) {
    case DType::kF8E8M0:
    case DType::kU8:
      return core::Ue8m0ToFloat(static_cast<const uint8_t*>(scale.data)[i]);
    default:
      return core::LoadAsFloat(scale.data, scale.dtype, i);
  }
}

bool IsScaleDType(DType dtype) {
  return dtype == DType::kF8E8M0 || dtype == DType::kU8 || dtype == DType::kF32 ||
         dtype == DType::kBF16 || dtype == DType::kF16;
}

absl::Status ShapeError(const std::string& name, const std::string& what,
                        const core::TensorView& stored, const core::TensorView& scale,
                        const core::Shape& logical) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: %s (stored %s %s, scale %s %s, expected logical shape %s)", name, what,
      core::DTypeName(stored.dtype), ShapeString(stored.shape_vector()),
      scale.data ? core::DTypeName(scale.dtype) : "none",
      scale.data ? ShapeString(scale.shape_vector()) : "", ShapeString(logical)));
}

}  // namespace

absl::StatusOr<core::Tensor> DecodeToF32(const core::TensorView& stored,
                                         const core::TensorView& scale,
                                         const core::Shape& logical_shape,
                                         const std::string& name) {
  const bool has_scale = scale.data != nullptr;
  const core::Shape stored_shape = stored.shape_vector();
  if (has_scale && !IsScaleDType(scale.dtype)) {
    return ShapeError(name, "unsupported scale dtype", stored, scale, logical_shape);
  }
  // Plain floats.
  if (stored.dtype == DType::kF32 || stored.dtype == DType::kBF16 ||
      stored.dtype == DType::kF16) {
    if (has_scale) return ShapeError(name, "unexpected scale for a plain float tensor", stored,
                                     scale, logical_shape);
    if (stored_shape != logical_shape) {
      return ShapeError(name, "shape mismatch", stored, scale, logical_shape);
    }
    return core::ToFloat32(stored);
  }

  const int rank = static_cast<int>(logical_shape.size());
  if (rank < 2) return ShapeError(name, "quantised tensors need rank >= 2", stored, scale,
                                  logical_shape);
  const int64_t rows = logical_shape[rank - 2];
  const int64_t cols = logical_shape[rank - 1];
  const int64_t batch = NumElements(logical_shape) / std::max<int64_t>(rows * cols, 1);
  core::Shape batch_dims(logical_shape.begin(), logical_shape.end() - 2);
  auto with_batch = [&](int64_t a, int64_t b) {
    core::Shape s = batch_dims;
    s.push_back(a);
    s.push_back(b);
    return s;
  };

  if (stored.dtype == DType::kF8E4M3) {
    if (!has_scale) {
      return ShapeError(name, "FP8 tensor without its block scale (.scale / weight_scale_inv)",
                        stored, scale, logical_shape);
    }
    const int64_t scale_rows = (rows + 127) / 128;
    const int64_t scale_cols = (cols + 127) / 128;
    if (stored_shape != logical_shape ||
        scale.shape_vector() != with_batch(scale_rows, scale_cols)) {
      return ShapeError(name, "FP8 shapes do not match 128x128 block scaling", stored, scale,
                        logical_shape);
    }
    core::Tensor out = core::Tensor::Empty(DType::kF32, logical_shape);
    const uint8_t* codes = static_cast<const uint8_t*>(stored.data);
    float* dst = out.data<float>();
    // Row-parallel: each element is its code times its tile's scale.
    core::ThreadPool::Default().ParallelFor(0, batch * rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t br = begin; br < end; ++br) {
        const int64_t b = br / rows, r = br % rows;
        const int64_t scale_row = (b * scale_rows + r / 128) * scale_cols;
        for (int64_t c = 0; c < cols; ++c) {
          dst[br * cols + c] =
              core::F8E4M3ToFloat(codes[br * cols + c]) * ScaleAt(scale, scale_row + c / 128);
        }
      }
    });
    return out;
  }

  if (stored.dtype == DType::kI8 || stored.dtype == DType::kU8) {
    if (!has_scale) {
      return ShapeError(name, "packed FP4 tensor without its scale", stored, scale,
                        logical_shape);
    }
    if (cols % 32 != 0 || stored_shape != with_batch(rows, cols / 2) ||
        scale.shape_vector() != with_batch(rows, cols / 32)) {
      return ShapeError(name, "packed FP4 shapes do not match [rows, cols/2] with per-32 scales",
                        stored, scale, logical_shape);
    }
    core::Tensor out = core::Tensor::Empty(DType::kF32, logical_shape);
    const uint8_t* packed = static_cast<const uint8_t*>(stored.data);
    float* dst = out.data<float>();
    // Row-parallel: low nibble = even element, high nibble = odd element (pitfall 14).
    core::ThreadPool::Default().ParallelFor(0, batch * rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t br = begin; br < end; ++br) {
        for (int64_t c = 0; c < cols; ++c) {
          const uint8_t byte = packed[br * (cols / 2) + c / 2];
          const uint8_t code = (c % 2 == 0) ? (byte & 0x0f) : (byte >> 4);
          dst[br * cols + c] = core::F4E2M1ToFloat(code) * ScaleAt(scale, br * (cols / 32) + c / 32);
        }
      }
    });
    return out;
  }
  return ShapeError(name, absl::StrFormat("unsupported dtype %s", core::DTypeName(stored.dtype)),
                    stored, scale, logical_shape);
}

}  // namespace v4rl::model
