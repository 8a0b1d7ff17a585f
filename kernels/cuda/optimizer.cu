#include <cmath>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/optimizer.h"

namespace v4rl::kernels::cuda {
namespace {

// Σ x² per matrix into norm_sq[b] (zeroed by the caller); grid (chunks, count).
__global__ void NormSquaredKernel(const float* x, int64_t size, float* norm_sq) {
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const float* m = x + blockIdx.y * size;
  float sum = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    sum += m[i] * m[i];
  }
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) atomicAdd(&norm_sq[blockIdx.y], sum);
}

// work[b] (wide [n, m], bf16|f32) <- in[b] [rows, cols] (transposed when tall) / (‖in‖ + eps),
// with learner/newton_schulz.cc's rounding: the f32 inverse of the f32 norm.
__global__ void PackKernel(const float* in, int64_t rows, int64_t cols, bool transpose,
                           const float* norm_sq, float eps, void* work, bool bf16) {
  WaitForPriorKernels();
  const int64_t size = rows * cols;
  const float inverse = 1.0f / (sqrtf(norm_sq[blockIdx.y]) + eps);
  const float* src = in + blockIdx.y * size;
  const int64_t base = blockIdx.y * size;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    StoreF(work, bf16, base + (transpose ? c * rows + r : i), src[i] * inverse);
  }
}

// out[b] [rows, cols] f32 <- work[b] (untransposed).
__global__ void UnpackKernel(const void* work, bool bf16, int64_t rows, int64_t cols,
                             bool transpose, float* out) {
  WaitForPriorKernels();
  const int64_t size = rows * cols;
  const int64_t base = blockIdx.y * size;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[base + i] = LoadF(work, bf16, base + (transpose ? c * rows + r : i));
  }
}

// M <- mu M + G; input <- nesterov ? mu M + G : M.
__global__ void MomentumKernel(const float* grad, float* momentum, float* input, int64_t n,
                               float mu, bool nesterov) {
  WaitForPriorKernels();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    const float m = mu * momentum[i] + g;
    momentum[i] = m;
    input[i] = nesterov ? mu * m + g : m;
  }
}

// value[b] <- value[b] · decay - step · work[b] (untransposed).
__global__ void MuonApplyKernel(const void* work, bool bf16, int64_t rows, int64_t cols,
                                bool transpose, float* value, float decay, float lr,
                                float scale) {
  WaitForPriorKernels();
  const int64_t size = rows * cols;
  const int64_t base = blockIdx.y * size;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float update = LoadF(work, bf16, base + (transpose ? c * rows + r : i));
    value[base + i] = value[base + i] * decay - lr * scale * update;
  }
}

__global__ void AdamWKernel(float* value, const float* grad, float* m, float* v, int64_t n,
                            float beta1, float beta2, double correction1, double correction2,
                            float epsilon, float decay, float lr) {
  WaitForPriorKernels();
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[k];
    const float mk = beta1 * m[k] + (1.0f - beta1) * g;
    const float vk = beta2 * v[k] + (1.0f - beta2) * g * g;
    m[k] = mk;
    v[k] = vk;
    // learner/optimizer.cc divides the f32 moments by double corrections.
    const double m_hat = mk / correction1;
    const double v_hat = vk / correction2;
    value[k] = value[k] * decay - lr * static_cast<float>(m_hat / (sqrt(v_hat) + epsilon));
  }
}

dim3 Grid(int64_t size, int64_t count) {
  return dim3(static_cast<unsigned>(std::min<int64_t>((size + 255) / 256, 1024)),
              static_cast<unsigned>(count));
}

bool IsF32Stack(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.dtype == core::DType::kF32 && v.rank == 3 &&
         v.is_contiguous() && v.data != nullptr;
}

// Device scratch freed in stream order when it goes out of scope.
struct Scratch {
  void* data = nullptr;
  ~Scratch() {
    if (data) cudaFreeAsync(data, 0);
  }
  absl::Status Allocate(int64_t bytes) {
    if (cudaMallocAsync(&data, std::max<int64_t>(bytes, 16), 0) != cudaSuccess) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("optimizer: cudaMallocAsync(%d) failed", bytes));
    }
    return absl::OkStatus();
  }
};

// The orthogonalised matrices in `x` (wide [count, n, m], bf16|f32) from `in`; `x2`, `gram`,
// `poly` are scratch of the same element type ([count, n, m], [count, n, n] x2).
absl::Status Iterate(BlasHandle& handle, const NewtonSchulzParams& params, int64_t count,
                     int64_t n, int64_t m, void*& x, void*& x2, void* gram, void* poly) {
  const core::DType type = params.bf16 ? core::DType::kBF16 : core::DType::kF32;
  const int64_t element = params.bf16 ? 2 : 4;
  const int total = params.fast_iterations + params.settle_iterations;
  for (int it = 0; it < total; ++it) {
    const bool fast = it < params.fast_iterations;
    const float a = fast ? params.fast_a : params.settle_a;
    const float b = fast ? params.fast_b : params.settle_b;
    const float c = fast ? params.fast_c : params.settle_c;
    // gram = X Xᵀ
    BatchedGemmParams g;
    g.a = {x, type, m, n * m};
    g.b = {x, type, m, n * m};
    g.trans_b = true;
    g.c = gram, g.c_dtype = type, g.ldc = n, g.batch_stride_c = n * n;
    g.m = n, g.n = n, g.k = m, g.batch = count;
    if (absl::Status s = BatchedGemm(handle, g); !s.ok()) return s;
    // poly = c · gram · gram + b · gram
    if (cudaMemcpyAsync(poly, gram, count * n * n * element, cudaMemcpyDeviceToDevice,
                        LaunchStream()) != cudaSuccess) {
      return absl::InternalError("NewtonSchulz: cudaMemcpyAsync failed");
    }
    BatchedGemmParams q;
    q.a = {gram, type, n, n * n};
    q.b = {gram, type, n, n * n};
    q.c = poly, q.c_dtype = type, q.ldc = n, q.batch_stride_c = n * n;
    q.m = n, q.n = n, q.k = n, q.batch = count;
    q.alpha = c, q.beta = b;
    if (absl::Status s = BatchedGemm(handle, q); !s.ok()) return s;
    // x2 = poly · X + a · X
    if (cudaMemcpyAsync(x2, x, count * n * m * element, cudaMemcpyDeviceToDevice, LaunchStream()) !=
        cudaSuccess) {
      return absl::InternalError("NewtonSchulz: cudaMemcpyAsync failed");
    }
    BatchedGemmParams u;
    u.a = {poly, type, n, n * n};
    u.b = {x, type, m, n * m};
    u.c = x2, u.c_dtype = type, u.ldc = m, u.batch_stride_c = n * m;
    u.m = n, u.n = m, u.k = n, u.batch = count;
    u.alpha = 1.0f, u.beta = a;
    if (absl::Status s = BatchedGemm(handle, u); !s.ok()) return s;
    std::swap(x, x2);
  }
  return absl::OkStatus();
}

// Runs HybridNS on in [count, rows, cols] f32; the result stays in `x` (wide orientation) inside
// `scratch`, which the caller keeps alive until it has consumed it.
absl::Status Orthogonalise(BlasHandle& handle, const float* in, int64_t count, int64_t rows,
                           int64_t cols, const NewtonSchulzParams& params, Scratch& scratch,
                           void*& x) {
  const bool transpose = rows > cols;
  const int64_t n = transpose ? cols : rows, m = transpose ? rows : cols;
  const int64_t element = params.bf16 ? 2 : 4;
  const int64_t matrix_bytes = count * n * m * element, gram_bytes = count * n * n * element;
  const int64_t norm_bytes = (count * 4 + 255) / 256 * 256;
  if (absl::Status s = scratch.Allocate(norm_bytes + 2 * matrix_bytes + 2 * gram_bytes); !s.ok()) {
    return s;
  }
  char* base = static_cast<char*>(scratch.data);
  float* norm_sq = reinterpret_cast<float*>(base);
  x = base + norm_bytes;
  void* x2 = base + norm_bytes + matrix_bytes;
  void* gram = base + norm_bytes + 2 * matrix_bytes;
  void* poly = base + norm_bytes + 2 * matrix_bytes + gram_bytes;
  cudaMemsetAsync(norm_sq, 0, count * sizeof(float), LaunchStream());
  const int64_t size = rows * cols;
  LaunchKernel(NormSquaredKernel, Grid(size, count), 256, 0, in, size, norm_sq);
  LaunchKernel(PackKernel, Grid(size, count), 256, 0, in, rows, cols, transpose, norm_sq,
               params.norm_epsilon, x, params.bf16);
  if (absl::Status s = LaunchStatus("NewtonSchulz"); !s.ok()) return s;
  return Iterate(handle, params, count, n, m, x, x2, gram, poly);
}

}  // namespace

absl::Status NewtonSchulz(BlasHandle& handle, const core::TensorView& in,
                          const core::TensorView& out, const NewtonSchulzParams& params) {
  if (!IsF32Stack(in) || !IsF32Stack(out) || !out.SameShape(in.shape_vector())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "NewtonSchulz: in %s and out %s must be equal-shaped contiguous f32 [count, rows, cols] "
        "device views", in.DebugString(), out.DebugString()));
  }
  const int64_t count = in.shape[0], rows = in.shape[1], cols = in.shape[2];
  if (in.numel() == 0) return absl::OkStatus();
  Scratch scratch;
  void* x = nullptr;
  if (absl::Status s = Orthogonalise(handle, in.data_as<float>(), count, rows, cols, params,
                                     scratch, x);
      !s.ok()) {
    return s;
  }
  LaunchKernel(UnpackKernel, Grid(rows * cols, count), 256, 0, x, params.bf16, rows, cols,
               rows > cols, out.data_as<float>());
  return LaunchStatus("NewtonSchulz");
}

absl::Status MuonStep(BlasHandle& handle, const core::TensorView& value,
                      const core::TensorView& grad, const core::TensorView& momentum,
                      const MuonParams& params) {
  if (!IsF32Stack(value) || !IsF32Stack(grad) || !IsF32Stack(momentum) ||
      !grad.SameShape(value.shape_vector()) || !momentum.SameShape(value.shape_vector())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "MuonStep: value %s, grad %s, momentum %s must be equal-shaped contiguous f32 "
        "[count, rows, cols] device views", value.DebugString(), grad.DebugString(),
        momentum.DebugString()));
  }
  const int64_t count = value.shape[0], rows = value.shape[1], cols = value.shape[2];
  const int64_t total = value.numel();
  if (total == 0) return absl::OkStatus();
  Scratch input;
  if (absl::Status s = input.Allocate(total * 4); !s.ok()) return s;
  LaunchKernel(MomentumKernel, Grid(total, 1), 256, 0, grad.data_as<float>(),
               momentum.data_as<float>(), static_cast<float*>(input.data), total, params.momentum,
               params.nesterov);
  Scratch scratch;
  void* x = nullptr;
  if (absl::Status s = Orthogonalise(handle, static_cast<const float*>(input.data), count, rows,
                                     cols, params.newton_schulz, scratch, x);
      !s.ok()) {
    return s;
  }
  const float scale =
      params.update_rms * std::sqrt(static_cast<float>(std::max(rows, cols)));
  const float decay = 1.0f - params.lr * params.weight_decay;
  LaunchKernel(MuonApplyKernel, Grid(rows * cols, count), 256, 0, x, params.newton_schulz.bf16,
               rows, cols, rows > cols, value.data_as<float>(), decay, params.lr, scale);
  return LaunchStatus("MuonStep");
}

absl::Status AdamWStep(const core::TensorView& value, const core::TensorView& grad,
                       const core::TensorView& m, const core::TensorView& v,
                       const AdamWParams& params) {
  const core::TensorView* views[] = {&value, &grad, &m, &v};
  for (const core::TensorView* t : views) {
    if (t->device != core::Device::kCuda || t->dtype != core::DType::kF32 ||
        !t->is_contiguous() || !t->SameShape(value.shape_vector()) || t->data == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "AdamWStep: value %s, grad %s, m %s, v %s must be equal-shaped contiguous f32 device "
          "views", value.DebugString(), grad.DebugString(), m.DebugString(), v.DebugString()));
    }
  }
  if (params.step < 1) return absl::InvalidArgumentError("AdamWStep: step must be >= 1");
  const int64_t n = value.numel();
  if (n == 0) return absl::OkStatus();
  const double correction1 = 1.0 - std::pow(static_cast<double>(params.beta1), params.step);
  const double correction2 = 1.0 - std::pow(static_cast<double>(params.beta2), params.step);
  LaunchKernel(AdamWKernel, Grid(n, 1), 256, 0, value.data_as<float>(), grad.data_as<float>(),
               m.data_as<float>(), v.data_as<float>(), n, params.beta1, params.beta2, correction1,
               correction2, params.epsilon, 1.0f - params.lr * params.weight_decay, params.lr);
  return LaunchStatus("AdamWStep");
}

}  // namespace v4rl::kernels::cuda
