#include "kernels/cuda/head_loss.h"

#include <cuda_runtime.h>

#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/linear_backward.h"
#include "kernels/cuda/token_losses.h"

namespace v4rl::kernels::cuda {
namespace {

// Device memory freed in stream order.
struct DeviceBuffer {
  void* data = nullptr;
  ~DeviceBuffer() {
    if (data) cudaFreeAsync(data, 0);
  }
};

}  // namespace

absl::StatusOr<double> ChunkedCrossEntropy(BlasHandle& handle, const ChunkedCrossEntropyArgs& a) {
  const core::TensorView& x = a.hidden;
  const core::TensorView& w = a.head;
  const bool ok = x.device == core::Device::kCuda && w.device == core::Device::kCuda &&
                  x.rank == 2 && w.rank == 2 && x.strides[1] == 1 && w.strides[1] == 1 &&
                  x.dtype == w.dtype &&
                  (x.dtype == core::DType::kF32 || x.dtype == core::DType::kBF16) &&
                  x.shape[1] == w.shape[1] && a.chunk_rows >= 1 &&
                  a.mask.device == core::Device::kCuda && a.mask.dtype == core::DType::kF32 &&
                  a.mask.numel() == x.shape[0] && a.mask.is_contiguous();
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ChunkedCrossEntropy: hidden %s, head %s, mask %s, chunk_rows %d do not fit",
        x.DebugString(), w.DebugString(), a.mask.DebugString(), a.chunk_rows));
  }
  const int64_t rows = x.shape[0], vocab = w.shape[0];
  // The mask total (one sync): the normaliser of every chunk's gradient.
  core::Tensor mask = core::Tensor::Empty(core::DType::kF32, {rows});
  if (absl::Status s = Copy(a.mask, mask.view()); !s.ok()) return s;
  double mask_total = 0;
  for (int64_t r = 0; r < rows; ++r) mask_total += mask.data<float>()[r];
  const float inv_total = mask_total > 0 ? static_cast<float>(1.0 / mask_total) : 0.0f;
  if (rows == 0 || vocab == 0) return 0.0;

  const int64_t chunk = std::min(a.chunk_rows, rows);
  const bool bf16 = x.dtype == core::DType::kBF16;
  DeviceBuffer logits_buffer, grad_buffer, losses_buffer;
  if (cudaMallocAsync(&logits_buffer.data, chunk * vocab * sizeof(float), 0) != cudaSuccess ||
      (bf16 && cudaMallocAsync(&grad_buffer.data, chunk * vocab * 2, 0) != cudaSuccess) ||
      cudaMallocAsync(&losses_buffer.data, rows * sizeof(float), 0) != cudaSuccess) {
    return absl::ResourceExhaustedError("ChunkedCrossEntropy: cudaMallocAsync of the chunk");
  }
  const core::TensorView losses = core::TensorView::Contiguous(
      losses_buffer.data, core::DType::kF32, {rows}, core::Device::kCuda);
  const bool want_grad = a.dhidden.data != nullptr || a.dhead.data != nullptr;
  for (int64_t begin = 0; begin < rows; begin += chunk) {
    const int64_t end = std::min(rows, begin + chunk), n = end - begin;
    const core::TensorView logits = core::TensorView::Contiguous(
        logits_buffer.data, core::DType::kF32, {n, vocab}, core::Device::kCuda);
    const core::TensorView xs = x.Slice(0, begin, end);
    BatchedGemmParams g;
    g.a = {xs.data, x.dtype, x.strides[0], 0};
    g.b = {w.data, w.dtype, w.strides[0], 0};
    g.trans_b = true;
    g.c = logits.data, g.c_dtype = core::DType::kF32, g.ldc = vocab;
    g.m = n, g.n = vocab, g.k = x.shape[1];
    if (absl::Status s = BatchedGemm(handle, g); !s.ok()) return s;
    const core::TensorView grad =
        !want_grad ? core::TensorView()
        : bf16     ? core::TensorView::Contiguous(grad_buffer.data, core::DType::kBF16,
                                                  {n, vocab}, core::Device::kCuda)
                   : logits;
    if (absl::Status s = MaskedCrossEntropy(logits, a.targets.Slice(0, begin, end),
                                            a.mask.Slice(0, begin, end), inv_total,
                                            losses.Slice(0, begin, end), grad);
        !s.ok()) {
      return s;
    }
    if (!want_grad) continue;
    const core::TensorView no_view;
    if (absl::Status s = LinearBackward(handle, xs, w, grad,
                                        a.dhidden.data ? a.dhidden.Slice(0, begin, end) : no_view,
                                        a.dhead);
        !s.ok()) {
      return s;
    }
  }
  core::Tensor host_losses = core::Tensor::Empty(core::DType::kF32, {rows});
  if (absl::Status s = Copy(losses, host_losses.view()); !s.ok()) return s;
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) loss += host_losses.data<float>()[r];
  return loss;
}

}  // namespace v4rl::kernels::cuda
