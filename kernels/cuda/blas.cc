#include "kernels/cuda/blas.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cuda/staging.h"

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

absl::Status GroupedBatchedGemm(BlasHandle& handle, absl::Span<const GemmProblem> problems,
                                core::DType c_dtype, bool trans_a, bool trans_b, float alpha,
                                float beta) {
  if (!handle.on_default_stream()) {
    return absl::InvalidArgumentError("GroupedBatchedGemm: a lane's handle (default stream only)");
  }
  if (c_dtype != core::DType::kF32 && c_dtype != core::DType::kBF16) {
    return absl::InvalidArgumentError("GroupedBatchedGemm: c must be f32 or bf16");
  }
  // Column-major view as BatchedGemm: cᵀ [n, m] = op(b)ᵀ · op(a)ᵀ, one group of one problem each.
  std::vector<int> m, n, k, lda, ldb, ldc;
  std::vector<const void*> pointers;  // b of every problem, then a, then c
  std::vector<const void*> a_pointers, c_pointers;
  for (const GemmProblem& p : problems) {
    if (p.m < 0 || p.n < 0 || p.k < 0) {
      return absl::InvalidArgumentError("GroupedBatchedGemm: negative size");
    }
    if (p.m == 0 || p.n == 0) continue;
    const int64_t a_cols = trans_a ? p.m : p.k, b_cols = trans_b ? p.k : p.n;
    if (p.a == nullptr || p.b == nullptr || p.c == nullptr ||
        p.lda < std::max<int64_t>(a_cols, 1) || p.ldb < std::max<int64_t>(b_cols, 1) ||
        p.ldc < p.n || std::max({p.m, p.n, p.k, p.lda, p.ldb, p.ldc}) > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GroupedBatchedGemm: problem %d (m=%d, n=%d, k=%d, lda %d, ldb %d, ldc %d) has a null "
          "operand or a leading dimension too small",
          static_cast<int>(m.size()), p.m, p.n, p.k, p.lda, p.ldb, p.ldc));
    }
    m.push_back(static_cast<int>(p.n));
    n.push_back(static_cast<int>(p.m));
    k.push_back(static_cast<int>(p.k));
    lda.push_back(static_cast<int>(p.ldb));
    ldb.push_back(static_cast<int>(p.lda));
    ldc.push_back(static_cast<int>(p.ldc));
    pointers.push_back(p.b);
    a_pointers.push_back(p.a);
    c_pointers.push_back(p.c);
  }
  const int groups = static_cast<int>(m.size());
  if (groups == 0) return absl::OkStatus();
  pointers.insert(pointers.end(), a_pointers.begin(), a_pointers.end());
  pointers.insert(pointers.end(), c_pointers.begin(), c_pointers.end());
  absl::StatusOr<void*> staged = StageAsync(pointers.data(), pointers.size() * sizeof(void*));
  if (!staged.ok()) return staged.status();
  void* const* device_pointers = static_cast<void* const*>(*staged);
  const std::vector<cublasOperation_t> op_a(groups, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  const std::vector<cublasOperation_t> op_b(groups, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  const std::vector<float> alphas(groups, alpha), betas(groups, beta);
  const std::vector<int> group_size(groups, 1);
  const cublasStatus_t status = cublasGemmGroupedBatchedEx(
      static_cast<cublasHandle_t>(handle.raw()), op_a.data(), op_b.data(), m.data(), n.data(),
      k.data(), alphas.data(), device_pointers, CUDA_R_16BF, lda.data(), device_pointers + groups,
      CUDA_R_16BF, ldb.data(), betas.data(), device_pointers + 2 * groups,
      c_dtype == core::DType::kF32 ? CUDA_R_32F : CUDA_R_16BF, ldc.data(), groups,
      group_size.data(), CUBLAS_COMPUTE_32F);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(
        absl::StrFormat("GroupedBatchedGemm: cublasGemmGroupedBatchedEx (%d problems): %s", groups,
                        cublasGetStatusString(status)));
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
