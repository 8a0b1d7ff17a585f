#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <tuple>

#include "absl/strings/str_format.h"
#include "kernels/cuda/stream.h"

namespace v4rl::kernels::cuda {
namespace {

absl::Status CublasError(cublasStatus_t status, const char* what) {
  return absl::InternalError(absl::StrFormat("Gemm: %s failed: %s (%d)", what,
                                             cublasGetStatusString(status), int(status)));
}

#define V4RL_CUBLAS(call)                                          \
  do {                                                             \
    if (cublasStatus_t s_ = (call); s_ != CUBLAS_STATUS_SUCCESS) { \
      return CublasError(s_, #call);                               \
    }                                                              \
  } while (0)

// Largest power of two (<= 16) dividing the address, the row pitch and the batch pitch in bytes.
uint32_t Alignment(const void* data, int64_t ld, int64_t batch_stride, int64_t element_bytes) {
  const uint64_t bits = reinterpret_cast<uint64_t>(data) | uint64_t(ld * element_bytes) |
                        uint64_t(batch_stride * element_bytes);
  uint32_t alignment = 16;
  while (alignment > 1 && (bits % alignment) != 0) alignment /= 2;
  return alignment;
}

// A rank-2 view with unit inner stride: (rows, cols, row stride), and the element distance to the
// next matrix of a batch (0 for a single matrix).
struct Matrix {
  void* data;
  int64_t rows, cols, ld;
  int64_t batch_stride = 0;
};

absl::StatusOr<Matrix> AsMatrix(const char* name, const core::TensorView& v, bool allow_f32) {
  const bool dtype_ok =
      v.dtype == core::DType::kBF16 || (allow_f32 && v.dtype == core::DType::kF32);
  if (v.device != core::Device::kCuda || !dtype_ok || v.rank != 2 || v.strides[1] != 1 ||
      v.strides[0] < v.shape[1] || v.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Gemm: %s must be a rank-2 %s device view with a unit inner stride, got %s",
                        name, allow_f32 ? "bf16|f32" : "bf16", v.DebugString()));
  }
  return Matrix{v.data, v.shape[0], v.shape[1], std::max<int64_t>(v.strides[0], 1)};
}

// A rank-3 view [batch, rows, cols] with unit inner stride, a row stride of at least cols and a
// non-negative batch stride, as one Matrix per batch entry.
absl::StatusOr<Matrix> AsBatch(const char* name, const core::TensorView& v, bool allow_f32) {
  const bool dtype_ok =
      v.dtype == core::DType::kBF16 || (allow_f32 && v.dtype == core::DType::kF32);
  if (v.device != core::Device::kCuda || !dtype_ok || v.rank != 3 || v.strides[2] != 1 ||
      v.strides[1] < v.shape[2] || v.strides[0] < 0 || v.data == nullptr ||
      v.shape[0] > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("StridedBatchedGemm: %s must be a rank-3 %s device view [batch, rows, "
                        "cols] with a unit inner stride, got %s",
                        name, allow_f32 ? "bf16|f32" : "bf16", v.DebugString()));
  }
  return Matrix{v.data, v.shape[1], v.shape[2], std::max<int64_t>(v.strides[1], 1), v.strides[0]};
}

// cublasLtMatrixLayoutCreate, plus the strided-batch attributes when batch > 1; destroys the
// layout again on a failure.
cublasStatus_t CreateLayout(cublasLtMatrixLayout_t* layout, cudaDataType_t type, int64_t rows,
                            int64_t cols, int64_t ld, int64_t batch, int64_t batch_stride) {
  cublasStatus_t status = cublasLtMatrixLayoutCreate(layout, type, rows, cols, ld);
  if (status != CUBLAS_STATUS_SUCCESS || batch == 1) return status;
  const int32_t count = static_cast<int32_t>(batch);
  status = cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                            sizeof(count));
  if (status == CUBLAS_STATUS_SUCCESS) {
    status = cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                              &batch_stride, sizeof(batch_stride));
  }
  if (status != CUBLAS_STATUS_SUCCESS) {
    cublasLtMatrixLayoutDestroy(*layout);
    *layout = nullptr;
  }
  return status;
}

}  // namespace

struct GemmHandle::Impl {
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  // (m, bucket of n, k, lda, ldb, ldc, out f32, alignments, accumulate, batch count, batch
  // strides) -> algorithm. The token
  // count n varies from call to call (every decode batch, every expert's rows); the heuristic
  // (~0.1 ms a query) runs once per power-of-two bucket of n, and each exact n only checks that
  // the bucket's algorithm serves it (cublasLtMatmulAlgoCheck), querying its own when not.
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, uint32_t,
                         uint32_t, uint32_t, bool, int64_t, int64_t, int64_t, int64_t>;
  struct Layouts {    // the n-dependent layouts of one exact n
    bool ok = false;  // `algo` serves this n (else plain cuBLAS)
    cublasLtMatmulAlgo_t algo = {};
    cublasLtMatrixLayout_t b = nullptr, c = nullptr;
  };
  struct Plan {
    bool ok = false;  // the heuristic found an algorithm for the bucket
    cublasLtMatmulAlgo_t algo = {};
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr;
    std::map<int64_t, Layouts> by_n;
  };
  std::map<Key, Plan> algos;

  ~Impl() {
    for (auto& [key, plan] : algos) {
      if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
      if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
      for (auto& [n, layouts] : plan.by_n) {
        if (layouts.b) cublasLtMatrixLayoutDestroy(layouts.b);
        if (layouts.c) cublasLtMatrixLayoutDestroy(layouts.c);
      }
    }
    if (lt != nullptr) cublasLtDestroy(lt);
    if (blas != nullptr) cublasDestroy(blas);
    if (workspace != nullptr) cudaFree(workspace);
  }

  // The heuristic's best algorithm for these layouts within the workspace and alignments, or
  // false when it has none.
  bool Heuristic(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                 cublasLtMatrixLayout_t c, uint32_t align_a, uint32_t align_b, uint32_t align_c,
                 cublasLtMatmulAlgo_t* algo);

  // out[M, N] (col-major N x M, ldc) = w[N, K] (col-major K x N, lda, transposed) ·
  // x[M, K] (col-major K x M, ldb), for `batch` such triples Matrix::batch_stride apart.
  absl::Status Run(const Matrix& x, const Matrix& w, const Matrix& out, bool out_f32, float alpha,
                   bool accumulate, int64_t batch = 1);
};

GemmHandle::GemmHandle(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GemmHandle::~GemmHandle() = default;

absl::StatusOr<std::unique_ptr<GemmHandle>> GemmHandle::Create(int64_t workspace_bytes) {
  auto impl = std::make_unique<Impl>();
  V4RL_CUBLAS(cublasLtCreate(&impl->lt));
  V4RL_CUBLAS(cublasCreate(&impl->blas));
  V4RL_CUBLAS(cublasSetMathMode(impl->blas, CUBLAS_DEFAULT_MATH));
  if (workspace_bytes > 0) {
    if (cudaError_t e = cudaMalloc(&impl->workspace, workspace_bytes); e != cudaSuccess) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("GemmHandle: cudaMalloc(%d) for the workspace: %s", workspace_bytes,
                          cudaGetErrorString(e)));
    }
  }
  impl->workspace_bytes = workspace_bytes;
  return std::unique_ptr<GemmHandle>(new GemmHandle(std::move(impl)));
}

bool GemmHandle::Impl::Heuristic(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                 cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                 uint32_t align_a, uint32_t align_b, uint32_t align_c,
                                 cublasLtMatmulAlgo_t* algo) {
  cublasLtMatmulPreference_t preference = nullptr;
  if (cublasLtMatmulPreferenceCreate(&preference) != CUBLAS_STATUS_SUCCESS) return false;
  const uint64_t bytes = static_cast<uint64_t>(workspace_bytes);
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes,
                                       sizeof(bytes));
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                       &align_a, sizeof(align_a));
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                       &align_b, sizeof(align_b));
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                       &align_c, sizeof(align_c));
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                       &align_c, sizeof(align_c));
  cublasLtMatmulHeuristicResult_t result = {};
  int count = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(lt, desc, a, b, c, c, preference, 1, &result, &count);
  cublasLtMatmulPreferenceDestroy(preference);
  if (status != CUBLAS_STATUS_SUCCESS || count == 0) return false;
  *algo = result.algo;
  return true;
}

absl::Status GemmHandle::Impl::Run(const Matrix& x, const Matrix& w, const Matrix& out,
                                   bool out_f32, float alpha, bool accumulate, int64_t batch) {
  const int64_t m = w.rows, n = x.rows, k = x.cols;
  if (m == 0 || n == 0 || batch == 0) return absl::OkStatus();
  const float beta = accumulate ? 1.0f : 0.0f;
  const cudaDataType_t out_type = out_f32 ? CUDA_R_32F : CUDA_R_16BF;
  const uint32_t align_a = Alignment(w.data, w.ld, w.batch_stride, 2),
                 align_b = Alignment(x.data, x.ld, x.batch_stride, 2),
                 align_c = Alignment(out.data, out.ld, out.batch_stride, out_f32 ? 4 : 2);
  int64_t bucket = 1;
  while (bucket < n) bucket *= 2;
  const Key key{
      m,       bucket,  k,          w.ld,  x.ld,           out.ld,         out_f32,         align_a,
      align_b, align_c, accumulate, batch, w.batch_stride, x.batch_stride, out.batch_stride};

  auto found = algos.find(key);
  if (found == algos.end()) {
    // First call of this bucket: descriptors and the heuristic's pick for n = bucket, kept.
    Plan plan;
    cublasLtMatrixLayout_t b = nullptr, c = nullptr;  // for the bucket's n, dropped after
    auto build = [&]() -> absl::Status {
      V4RL_CUBLAS(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
      V4RL_CUBLAS(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                                 sizeof(trans_a)));
      V4RL_CUBLAS(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                                 sizeof(trans_b)));
      V4RL_CUBLAS(CreateLayout(&plan.a, CUDA_R_16BF, k, m, w.ld, batch, w.batch_stride));
      V4RL_CUBLAS(CreateLayout(&b, CUDA_R_16BF, k, bucket, x.ld, batch, x.batch_stride));
      V4RL_CUBLAS(CreateLayout(&c, out_type, m, bucket, out.ld, batch, out.batch_stride));
      plan.ok = Heuristic(plan.desc, plan.a, b, c, align_a, align_b, align_c, &plan.algo);
      return absl::OkStatus();
    };
    absl::Status built = build();
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (!built.ok()) {
      if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
      if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
      return built;
    }
    found = algos.emplace(key, std::move(plan)).first;
  }
  Plan& plan = found->second;
  auto exact = plan.by_n.find(n);
  if (exact == plan.by_n.end()) {
    Layouts layouts;
    V4RL_CUBLAS(CreateLayout(&layouts.b, CUDA_R_16BF, k, n, x.ld, batch, x.batch_stride));
    if (cublasStatus_t e =
            CreateLayout(&layouts.c, out_type, m, n, out.ld, batch, out.batch_stride);
        e != CUBLAS_STATUS_SUCCESS) {
      cublasLtMatrixLayoutDestroy(layouts.b);
      return CublasError(e, "cublasLtMatrixLayoutCreate(c)");
    }
    if (plan.ok) {
      cublasLtMatmulHeuristicResult_t result = {};
      layouts.algo = plan.algo;
      layouts.ok = cublasLtMatmulAlgoCheck(lt, plan.desc, plan.a, layouts.b, layouts.c, layouts.c,
                                           &plan.algo, &result) == CUBLAS_STATUS_SUCCESS &&
                   result.workspaceSize <= static_cast<size_t>(workspace_bytes);
    }
    if (!layouts.ok) {  // the bucket's algorithm does not serve this n: its own query
      layouts.ok = Heuristic(plan.desc, plan.a, layouts.b, layouts.c, align_a, align_b, align_c,
                             &layouts.algo);
    }
    exact = plan.by_n.emplace(n, layouts).first;
  }
  const Layouts& layouts = exact->second;
  if (!layouts.ok) {
    // No cuBLASLt algorithm (e.g. a leading dimension cuBLASLt rejects): plain cuBLAS.
    V4RL_CUBLAS(cublasSetStream(blas, static_cast<cudaStream_t>(CurrentStream())));
    if (batch == 1) {
      V4RL_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(n), int(k), &alpha,
                               w.data, CUDA_R_16BF, int(w.ld), x.data, CUDA_R_16BF, int(x.ld),
                               &beta, out.data, out_type, int(out.ld), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
    } else {
      V4RL_CUBLAS(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(n), int(k),
                                             &alpha, w.data, CUDA_R_16BF, int(w.ld), w.batch_stride,
                                             x.data, CUDA_R_16BF, int(x.ld), x.batch_stride, &beta,
                                             out.data, out_type, int(out.ld), out.batch_stride,
                                             int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return absl::OkStatus();
  }
  V4RL_CUBLAS(cublasLtMatmul(lt, plan.desc, &alpha, w.data, plan.a, x.data, layouts.b, &beta,
                             out.data, layouts.c, out.data, layouts.c, &layouts.algo, workspace,
                             workspace_bytes, static_cast<cudaStream_t>(CurrentStream())));
  return absl::OkStatus();
}

absl::Status Gemm(GemmHandle& handle, const core::TensorView& x, const core::TensorView& w,
                  const core::TensorView& out, float alpha, bool accumulate) {
  auto xm = AsMatrix("x", x, /*allow_f32=*/false);
  if (!xm.ok()) return xm.status();
  auto wm = AsMatrix("w", w, /*allow_f32=*/false);
  if (!wm.ok()) return wm.status();
  auto om = AsMatrix("out", out, /*allow_f32=*/true);
  if (!om.ok()) return om.status();
  if (xm->cols != wm->cols || om->rows != xm->rows || om->cols != wm->rows) {
    return absl::InvalidArgumentError(absl::StrFormat("Gemm: x %s · wᵀ %s does not give out %s",
                                                      x.DebugString(), w.DebugString(),
                                                      out.DebugString()));
  }
  if (out.data == x.data || out.data == w.data) {
    return absl::InvalidArgumentError("Gemm: out must not alias x or w");
  }
  return handle.impl()->Run(*xm, *wm, *om, out.dtype == core::DType::kF32, alpha, accumulate);
}

absl::Status StridedBatchedGemm(GemmHandle& handle, const core::TensorView& x,
                                const core::TensorView& w, const core::TensorView& out) {
  auto xm = AsBatch("x", x, /*allow_f32=*/false);
  if (!xm.ok()) return xm.status();
  auto wm = AsBatch("w", w, /*allow_f32=*/false);
  if (!wm.ok()) return wm.status();
  auto om = AsBatch("out", out, /*allow_f32=*/true);
  if (!om.ok()) return om.status();
  const int64_t batch = x.shape[0];
  if (w.shape[0] != batch || out.shape[0] != batch || xm->cols != wm->cols ||
      om->rows != xm->rows || om->cols != wm->rows) {
    return absl::InvalidArgumentError(
        absl::StrFormat("StridedBatchedGemm: x %s · wᵀ %s does not give out %s", x.DebugString(),
                        w.DebugString(), out.DebugString()));
  }
  // The batch's outputs must not overlap: interleaved within rows, or one after another.
  const bool interleaved =
      om->batch_stride >= om->cols && (batch - 1) * om->batch_stride + om->cols <= om->ld;
  const bool stacked = om->batch_stride >= om->rows * om->ld;
  if (batch > 1 && !interleaved && !stacked) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "StridedBatchedGemm: out %s has overlapping batch entries", out.DebugString()));
  }
  if (out.data == x.data || out.data == w.data) {
    return absl::InvalidArgumentError("StridedBatchedGemm: out must not alias x or w");
  }
  return handle.impl()->Run(*xm, *wm, *om, out.dtype == core::DType::kF32, /*alpha=*/1.0f,
                            /*accumulate=*/false, batch);
}

absl::Status GroupedGemm(GemmHandle& handle, const core::TensorView& x, const core::TensorView& w,
                         absl::Span<const int64_t> offsets, const core::TensorView& out) {
  if (w.device != core::Device::kCuda || w.dtype != core::DType::kBF16 || w.rank != 3 ||
      !w.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GroupedGemm: w must be a contiguous bf16 [E, N, K] device view, got %s", w.DebugString()));
  }
  const int64_t num_experts = w.shape[0];
  if (static_cast<int64_t>(offsets.size()) != num_experts + 1 || offsets[0] != 0 || x.rank != 2 ||
      offsets[num_experts] != x.shape[0]) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GroupedGemm: offsets must hold E + 1 = %d entries from 0 to x's %d rows, got %d",
        num_experts + 1, x.rank == 2 ? x.shape[0] : -1, offsets.size()));
  }
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t begin = offsets[e], end = offsets[e + 1];
    if (end < begin) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GroupedGemm: offsets decrease at expert %d", e));
    }
    if (begin == end) continue;
    if (absl::Status s =
            Gemm(handle, x.Slice(0, begin, end), w.Select(0, e), out.Slice(0, begin, end));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
