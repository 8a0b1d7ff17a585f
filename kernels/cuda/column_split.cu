#include <algorithm>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/column_split.h"
#include "kernels/cuda/common.cuh"

namespace v4rl::kernels::cuda {
namespace {

struct SliceParams {
  const void* src = nullptr;
  void* dst = nullptr;
  const float* bias = nullptr;  // nullptr: no bias
  int64_t ld = 0, width = 0, ratio = 1;
  float scale = 1.0f;
  bool bf16 = false;
};

// The descriptors travel in the launch parameters (no upload, no sync).
struct SplitParams {
  SliceParams slices[kMaxColumnSlices];
  const int32_t* positions = nullptr;  // nullptr: p(r) = r mod seq_len
  int64_t rows = 0, seq_len = 1;
};

// blockIdx.y: the slice; a grid-stride loop over its rows · width elements.
__global__ void SplitColumnsKernel(const SplitParams p) {
  WaitForPriorKernels();
  const SliceParams s = p.slices[blockIdx.y];
  const int64_t total = p.rows * s.width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / s.width, c = i % s.width;
    if (s.bf16) {
      static_cast<uint16_t*>(s.dst)[i] = static_cast<const uint16_t*>(s.src)[r * s.ld + c];
      continue;
    }
    // Separate roundings (no contraction into an FMA): the GEMM epilogue's alpha, then the bias.
    float v = static_cast<const float*>(s.src)[r * s.ld + c];
    if (s.scale != 1.0f) v = __fmul_rn(v, s.scale);
    if (s.bias != nullptr) {
      const int64_t position = p.positions != nullptr ? p.positions[r] : r % p.seq_len;
      v = __fadd_rn(v, s.bias[(position % s.ratio) * s.width + c]);
    }
    static_cast<float*>(s.dst)[i] = v;
  }
}

}  // namespace

absl::Status SplitColumns(absl::Span<const ColumnSlice> slices, const core::TensorView& positions,
                          int64_t seq_len) {
  const char* op = "cuda::SplitColumns";
  using core::DType;
  if (slices.empty() || slices.size() > kMaxColumnSlices) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d slices, expected 1 to %d", op, slices.size(), kMaxColumnSlices));
  }
  SplitParams p;
  p.rows = slices[0].src.rank == 2 ? slices[0].src.shape[0] : -1;
  int64_t widest = 0;
  for (size_t i = 0; i < slices.size(); ++i) {
    const ColumnSlice& slice = slices[i];
    const std::string name = absl::StrFormat("slices[%d]", i);
    const std::string src_name = absl::StrFormat("%s.src", name);
    const std::string dst_name = absl::StrFormat("%s.dst", name);
    const std::string bias_name = absl::StrFormat("%s.bias", name);
    RowView src;
    if (absl::Status s = AsRows(op, src_name.c_str(), slice.src, &src); !s.ok()) return s;
    if (absl::Status s = CheckDeviceView(op, dst_name.c_str(), slice.dst, {slice.src.dtype});
        !s.ok()) {
      return s;
    }
    const int64_t elem = src.bf16 ? 2 : 4;
    const char* dst_begin = static_cast<const char*>(slice.dst.data);
    const char* src_begin = static_cast<const char*>(src.data);
    const bool overlap = src.rows > 0 && src.cols > 0 &&
                         dst_begin < src_begin + ((src.rows - 1) * src.ld + src.cols) * elem &&
                         src_begin < dst_begin + slice.dst.nbytes();
    if (slice.src.rank != 2 || src.rows != p.rows || !slice.dst.SameShape({src.rows, src.cols}) ||
        overlap) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %s must map src [%d, W] onto a distinct contiguous dst of the same shape, got src "
          "%s, dst %s",
          op, name, p.rows, slice.src.DebugString(), slice.dst.DebugString()));
    }
    SliceParams& sp = p.slices[i];
    sp.src = src.data;
    sp.dst = slice.dst.data;
    sp.ld = src.ld;
    sp.width = src.cols;
    sp.bf16 = src.bf16;
    sp.scale = slice.scale;
    if (src.bf16 && (slice.scale != 1.0f || slice.bias.data != nullptr)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: %s is bf16 and takes no scale or bias (f32 slices only)", op, name));
    }
    if (slice.bias.data != nullptr) {
      if (absl::Status s = CheckDeviceView(op, bias_name.c_str(), slice.bias, {DType::kF32});
          !s.ok()) {
        return s;
      }
      if (slice.bias.rank != 2 || slice.bias.shape[0] <= 0 || slice.bias.shape[1] != src.cols) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: %s.bias must be [ratio > 0, %d] f32, got %s", op, name, src.cols,
                            slice.bias.DebugString()));
      }
      sp.bias = slice.bias.data_as<const float>();
      sp.ratio = slice.bias.shape[0];
    }
    widest = std::max(widest, src.rows * src.cols);
  }
  if (positions.data != nullptr) {
    if (absl::Status s = CheckDeviceView(op, "positions", positions, {DType::kI32}); !s.ok()) {
      return s;
    }
    if (!positions.SameShape({p.rows})) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: positions must be [%d] i32, got %s",
                                                        op, p.rows, positions.DebugString()));
    }
    p.positions = positions.data_as<const int32_t>();
  } else if (seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: seq_len must be > 0 without positions, got %d", op, seq_len));
  }
  p.seq_len = std::max<int64_t>(seq_len, 1);
  if (widest == 0) return absl::OkStatus();
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((widest + 255) / 256, 2048)),
                  static_cast<unsigned>(slices.size()));
  LaunchKernel(SplitColumnsKernel, grid, 256, 0, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
