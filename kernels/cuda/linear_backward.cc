#include "kernels/cuda/linear_backward.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_format.h"
#include "kernels/cuda/model_backward_misc.h"

namespace v4rl::kernels::cuda {
namespace {

bool IsRowView(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.rank == 2 && v.strides[1] == 1 &&
         v.strides[0] >= v.shape[1] && v.data != nullptr &&
         (v.dtype == core::DType::kF32 || v.dtype == core::DType::kBF16);
}

GemmOperand Operand(const core::TensorView& v, int64_t batch_stride = 0) {
  return GemmOperand{v.data, v.dtype, std::max<int64_t>(v.strides[0], 1), batch_stride};
}

absl::Status Validate(const char* op, const core::TensorView& x, const core::TensorView& w,
                      const core::TensorView& dy, const core::TensorView& dx,
                      const core::TensorView& dw, int64_t n, int64_t k) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %s (x %s, w %s, dy %s, dx %s, dw %s)", op, why, x.DebugString(), w.DebugString(),
        dy.DebugString(), dx.DebugString(), dw.DebugString()));
  };
  // x is read only for dw: without dw it may be an empty view.
  const bool reads_x = dw.data != nullptr || x.data != nullptr;
  if (!IsRowView(dy) || (reads_x && !IsRowView(x))) {
    return bad("x and dy must be rank-2 f32|bf16 device row views (x may be empty without dw)");
  }
  if (dy.dtype != w.dtype || (reads_x && x.dtype != dy.dtype)) {
    return bad("x, w and dy must share a dtype");
  }
  if (dy.shape[1] != n || (reads_x && (x.shape[1] != k || dy.shape[0] != x.shape[0]))) {
    return bad("shape mismatch");
  }
  if (dx.data != nullptr) {
    if (!IsRowView(dx) || dx.shape[0] != dy.shape[0] || dx.shape[1] != k) return bad("bad dx");
    if (dy.dtype == core::DType::kF32 && dx.dtype != core::DType::kF32)
      return bad("f32 inputs need f32 dx");
    if (dx.data == x.data || dx.data == w.data || dx.data == dy.data) return bad("dx aliases an input");
  }
  if (dw.data != nullptr) {
    if (dw.device != core::Device::kCuda || !dw.SameShape(w.shape_vector()) ||
        (dw.dtype != core::DType::kF32 && dw.dtype != core::DType::kBF16)) {
      return bad("bad dw");
    }
    if (dy.dtype == core::DType::kF32 && dw.dtype != core::DType::kF32)
      return bad("f32 inputs need f32 dw");
    if (dw.data == x.data || dw.data == w.data || dw.data == dy.data) return bad("dw aliases an input");
  }
  return absl::OkStatus();
}

// Row chunks for dw's GEMM: 1, or more when dw's own ~128 x 128 output tiles fill less than half
// of the H200's 132 SMs while the summed rows are many (the mHC's fn: 24 x n·H over every token;
// the router gate: E x H). Only on the default stream into a contiguous f32 dw. From half a wave
// up one GEMM wins: at 4,096 rows the mid config's 1,024 x 2,048 gradients (128 tiles) took
// 28.8 µs unsplit against a 5-way split's GEMM plus 23.8 µs of AddRowSums (H200, Nsight Compute).
int64_t WeightGradientRowChunks(const BlasHandle& handle, const core::TensorView& dw, int64_t m,
                                int64_t n, int64_t k) {
  if (!handle.on_default_stream() || dw.dtype != core::DType::kF32 || dw.strides[0] != k) return 1;
  const int64_t tiles = ((n + 127) / 128) * ((k + 127) / 128);
  if (2 * tiles >= 132) return 1;
  return std::max<int64_t>(1, std::min<int64_t>({16, (4 * 132 + tiles - 1) / tiles, m / 512}));
}

// dw [n, k] += dyᵀ · x over `chunks` equal row chunks (split K): one batched GEMM into f32
// partials [chunks, n, k], the rows past the last whole chunk straight into dw, then the partials
// added in chunk order (AddRowSums; deterministic).
absl::Status ChunkedWeightGradient(BlasHandle& handle, const core::TensorView& x,
                                   const core::TensorView& dy, const core::TensorView& dw,
                                   int64_t chunks) {
  const int64_t m = dy.shape[0], n = dw.shape[0], k = dw.shape[1];
  const int64_t chunk = m / chunks, whole = chunk * chunks;
  void* partials = nullptr;
  if (cudaMallocAsync(&partials, chunks * n * k * sizeof(float), 0) != cudaSuccess) {
    return absl::ResourceExhaustedError("LinearBackward: cudaMallocAsync of the split-K partials");
  }
  BatchedGemmParams p;
  p.a = Operand(dy, chunk * dy.strides[0]);
  p.trans_a = true;
  p.b = Operand(x, chunk * x.strides[0]);
  p.c = partials;
  p.ldc = k;
  p.batch_stride_c = n * k;
  p.m = n, p.n = k, p.k = chunk, p.batch = chunks;
  absl::Status status = BatchedGemm(handle, p);
  if (status.ok() && whole < m) {
    BatchedGemmParams tail;
    tail.a = Operand(dy.Slice(0, whole, m));
    tail.trans_a = true;
    tail.b = Operand(x.Slice(0, whole, m));
    tail.c = dw.data;
    tail.ldc = k;
    tail.m = n, tail.n = k, tail.k = m - whole;
    tail.beta = 1.0f;
    status = BatchedGemm(handle, tail);
  }
  if (status.ok()) {
    status = AddRowSums(core::TensorView::Contiguous(partials, core::DType::kF32, {chunks, n * k},
                                                     core::Device::kCuda),
                        dw);
  }
  cudaFreeAsync(partials, 0);
  return status;
}

}  // namespace

absl::Status LinearBackward(BlasHandle& handle, const core::TensorView& x,
                            const core::TensorView& w, const core::TensorView& dy,
                            const core::TensorView& dx, const core::TensorView& dw) {
  return LinearBackward(handle, x, w, dy, dx, dw, /*overwrite_dx=*/false);
}

absl::Status LinearBackward(BlasHandle& handle, const core::TensorView& x,
                            const core::TensorView& w, const core::TensorView& dy,
                            const core::TensorView& dx, const core::TensorView& dw,
                            bool overwrite_dx) {
  return LinearBackward(handle, x, w, dy, dx, dw, overwrite_dx, /*overwrite_dw=*/false);
}

absl::Status LinearBackward(BlasHandle& handle, const core::TensorView& x,
                            const core::TensorView& w, const core::TensorView& dy,
                            const core::TensorView& dx, const core::TensorView& dw,
                            bool overwrite_dx, bool overwrite_dw) {
  if (!IsRowView(w)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "LinearBackward: w must be a rank-2 f32|bf16 device row view, got %s", w.DebugString()));
  }
  const int64_t n = w.shape[0], k = w.shape[1];
  if (absl::Status s = Validate("LinearBackward", x, w, dy, dx, dw, n, k); !s.ok()) return s;
  if (dw.data != nullptr && !IsRowView(dw)) {
    return absl::InvalidArgumentError("LinearBackward: dw must be a row view");
  }
  const int64_t m = dy.shape[0];
  if (dx.data != nullptr) {
    // dx [m, k] += dy [m, n] · w [n, k]
    BatchedGemmParams p;
    p.a = Operand(dy);
    p.b = Operand(w);
    p.c = dx.data;
    p.c_dtype = dx.dtype;
    p.ldc = dx.strides[0];
    p.m = m, p.n = k, p.k = n;
    p.beta = overwrite_dx ? 0.0f : 1.0f;  // beta 0: cuBLAS does not read dx
    if (absl::Status s = BatchedGemm(handle, p); !s.ok()) return s;
  }
  // Overwriting a dw no GEMM writes (no rows), or one the split-K path adds to: zeros first.
  const int64_t chunks =
      dw.data != nullptr && m > 0 ? WeightGradientRowChunks(handle, dw, m, n, k) : 1;
  if (dw.data != nullptr && overwrite_dw && (m == 0 || chunks > 1)) {
    if (absl::Status s = FillZero(dw); !s.ok()) return s;
  }
  if (dw.data != nullptr && m > 0) {
    if (chunks > 1) {
      return ChunkedWeightGradient(handle, x, dy, dw, chunks);
    }
    // dw [n, k] += dyᵀ [n, m] · x [m, k]
    BatchedGemmParams p;
    p.a = Operand(dy);
    p.trans_a = true;
    p.b = Operand(x);
    p.c = dw.data;
    p.c_dtype = dw.dtype;
    p.ldc = dw.strides[0];
    p.m = n, p.n = k, p.k = m;
    p.beta = overwrite_dw ? 0.0f : 1.0f;  // beta 0: cuBLAS does not read dw
    if (absl::Status s = BatchedGemm(handle, p); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status GroupedLinearBackward(BlasHandle& handle, const core::TensorView& x,
                                   const core::TensorView& w, const core::TensorView& dy,
                                   const int64_t* offsets, const core::TensorView& dx,
                                   const core::TensorView& dw, bool overwrite_dw) {
  if (w.device != core::Device::kCuda || w.rank != 3 || !w.is_contiguous() || offsets == nullptr ||
      (dw.data != nullptr && !dw.is_contiguous())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GroupedLinearBackward: w and dw must be contiguous [E, n, k] device views and offsets "
        "given, got w %s, dw %s", w.DebugString(), dw.DebugString()));
  }
  const int64_t experts = w.shape[0], n = w.shape[1], k = w.shape[2];
  const core::TensorView w0 = w.Select(0, 0);
  if (absl::Status s = Validate("GroupedLinearBackward", x, w0, dy, dx,
                                dw.data ? dw.Select(0, 0) : dw, n, k);
      !s.ok()) {
    return s;
  }
  if (offsets[0] != 0 || offsets[experts] > dy.shape[0]) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GroupedLinearBackward: offsets must run from 0 to at most P = %d rows, got %d to %d",
        dy.shape[0], offsets[0], offsets[experts]));
  }
  for (int64_t e = 0; e < experts; ++e) {
    if (offsets[e + 1] < offsets[e]) {
      return absl::InvalidArgumentError("GroupedLinearBackward: offsets decrease");
    }
  }
  // Experts write disjoint rows of dx and slices of dw: expert e on lane e mod kLanes, the lanes'
  // GEMMs issued from their own host threads.
  return handle.ForEachLane([&](int lane_index, BlasHandle& lane) -> absl::Status {
    const core::TensorView no_view;
    for (int64_t e = lane_index; e < experts; e += BlasHandle::kLanes) {
      const int64_t begin = offsets[e], end = offsets[e + 1];
      if (end == begin && !(overwrite_dw && dw.data != nullptr)) continue;
      // An expert without rows with overwrite_dw: LinearBackward zero-fills its dw.
      if (absl::Status s = LinearBackward(
              lane, x.data ? x.Slice(0, begin, end) : no_view, w.Select(0, e),
              dy.Slice(0, begin, end), dx.data && end > begin ? dx.Slice(0, begin, end) : no_view,
              dw.data ? dw.Select(0, e) : no_view, /*overwrite_dx=*/false, overwrite_dw);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace v4rl::kernels::cuda
