#include "kernels/cuda/blas.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "absl/strings/str_format.h"

namespace v4rl::kernels::cuda {

absl::StatusOr<std::unique_ptr<BlasHandle>> BlasHandle::Create(GemmMath math) {
  cublasHandle_t handle = nullptr;
  if (cublasStatus_t s = cublasCreate(&handle); s != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(
        absl::StrFormat("BlasHandle: cublasCreate failed: %s", cublasGetStatusString(s)));
  }
  // Default math: f32 GEMMs stay exact f32 (no TF32), bf16 ones use tensor cores.
  cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
  return std::unique_ptr<BlasHandle>(new BlasHandle(handle, math));
}

BlasHandle::~BlasHandle() {
  cublasDestroy(static_cast<cublasHandle_t>(handle_));
  if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

BlasHandle& BlasHandle::Lane(int index) {
  if (stream_ != nullptr) return *this;
  std::unique_ptr<BlasHandle>& lane = lanes_[((index % kLanes) + kLanes) % kLanes];
  if (lane == nullptr) {
    absl::StatusOr<std::unique_ptr<BlasHandle>> created = Create(math_);
    if (!created.ok()) return *this;
    cudaStream_t stream = nullptr;
    // cudaStreamCreate makes a blocking stream: ordered against the legacy default stream.
    if (cudaStreamCreate(&stream) != cudaSuccess) return *this;
    (*created)->stream_ = stream;  // the lane's destructor destroys it
    if (cublasSetStream(static_cast<cublasHandle_t>((*created)->raw()), stream) !=
        CUBLAS_STATUS_SUCCESS) {
      return *this;
    }
    lane = std::move(*created);
  }
  return *lane;
}

absl::Status BlasHandle::ForEachLane(const std::function<absl::Status(int, BlasHandle&)>& fn) {
  if (stream_ != nullptr) {
    for (int i = 0; i < kLanes; ++i) {
      if (absl::Status s = fn(i, *this); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  BlasHandle* lanes[kLanes];
  for (int i = 0; i < kLanes; ++i) lanes[i] = &Lane(i);  // created here, not by the threads
  if (lane_threads_ == nullptr) lane_threads_ = std::make_unique<core::ThreadPool>(kLanes);
  absl::Status statuses[kLanes];
  lane_threads_->ParallelFor(0, kLanes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) statuses[i] = fn(static_cast<int>(i), *lanes[i]);
  });
  for (const absl::Status& s : statuses) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status BatchedGemm(BlasHandle& handle, const BatchedGemmParams& p) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BatchedGemm(m=%d, n=%d, k=%d, batch=%d, trans_a=%d, trans_b=%d): %s", p.m, p.n, p.k,
        p.batch, p.trans_a, p.trans_b, why));
  };
  const auto is_float = [](core::DType t) {
    return t == core::DType::kF32 || t == core::DType::kBF16;
  };
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.batch < 0) return bad("negative size");
  if (p.m == 0 || p.n == 0 || p.batch == 0) return absl::OkStatus();
  if (!is_float(p.a.dtype) || p.a.dtype != p.b.dtype || !is_float(p.c_dtype)) {
    return bad("a and b must share a dtype of f32|bf16, c f32|bf16");
  }
  if (p.a.dtype == core::DType::kF32 && p.c_dtype != core::DType::kF32) {
    return bad("f32 inputs need an f32 output");
  }
  if (p.a.data == nullptr || p.b.data == nullptr || p.c == nullptr) return bad("null operand");
  const int64_t a_cols = p.trans_a ? p.m : p.k, b_cols = p.trans_b ? p.k : p.n;
  if (p.a.ld < std::max<int64_t>(a_cols, 1) || p.b.ld < std::max<int64_t>(b_cols, 1) ||
      p.ldc < p.n) {
    return bad(absl::StrFormat("leading dimensions too small (lda %d, ldb %d, ldc %d)", p.a.ld,
                               p.b.ld, p.ldc));
  }
  // Column-major view: cᵀ [n, m] = op(b)ᵀ · op(a)ᵀ; a row-major array is its transpose there.
  const cudaDataType_t in_type = p.a.dtype == core::DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t out_type = p.c_dtype == core::DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  const cublasStatus_t status = cublasGemmStridedBatchedEx(
      static_cast<cublasHandle_t>(handle.raw()), p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(p.n), int(p.m), int(p.k), &p.alpha, p.b.data,
      in_type, int(p.b.ld), p.b.batch_stride, p.a.data, in_type, int(p.a.ld), p.a.batch_stride,
      &p.beta, p.c, out_type, int(p.ldc), p.batch_stride_c, int(p.batch),
      in_type == CUDA_R_32F && handle.math() == GemmMath::kBf16Inputs ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                      : CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrFormat("BatchedGemm: cublasGemmStridedBatchedEx: %s",
                                               cublasGetStatusString(status)));
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
