// Batched strided GEMMs through cuBLAS for the backward pass and the optimizer, in both the
// `reference` precision (f32 inputs and outputs, exact f32 arithmetic: no TF32) and the
// `production` one (bf16 inputs, fp32 accumulation, bf16 or f32 output). A handle created with
// GemmMath::kBf16Inputs runs f32 GEMMs on bf16 tensor cores instead: cuBLAS rounds the f32 inputs
// to bf16 and accumulates in fp32 (CUBLAS_COMPUTE_32F_FAST_16BF; the arithmetic of a bf16
// autocast Linear, on f32 storage).
//
// Row-major convention: c[i] = alpha · op(a[i]) · op(b[i]) + beta · c[i] for i < batch, where
// op(a) is a [m, k] (a^T when trans_a, a stored [k, m]) and op(b) is [k, n].
// A BlasHandle owns one cublasHandle_t; work is queued on the default stream, or on one of the
// handle's lanes (Lane): child handles on their own streams for independent GEMMs too small to
// fill the GPU alone, such as one expert's rows.
// Thread-safety: a handle (lanes included) is used by one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace v4rl::kernels::cuda {

// How a handle computes GEMMs whose inputs are f32 (bf16 inputs always use tensor cores).
enum class GemmMath {
  kExactF32,    // f32 arithmetic (no TF32): the reference precision
  kBf16Inputs,  // inputs rounded to bf16, fp32 accumulation, on tensor cores
};

class BlasHandle {
 public:
  static absl::StatusOr<std::unique_ptr<BlasHandle>> Create(GemmMath math = GemmMath::kExactF32);
  ~BlasHandle();
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  void* raw() const { return handle_; }  // cublasHandle_t
  GemmMath math() const { return math_; }
  // Whether this handle queues on the default stream (false for a lane).
  bool on_default_stream() const { return stream_ == nullptr; }

  // Lanes for concurrent GEMMs: lane `index` mod kLanes, a child handle (same math) on its own
  // blocking stream, created on first use. Work queued on lanes runs concurrently across lanes,
  // in order within a lane, and in order with the default stream's work before and after it (the
  // legacy default stream waits for blocking streams and they wait for it), so callers need no
  // events. Give each lane GEMMs whose outputs no other lane touches. If a lane cannot be created
  // this handle serves instead (the same results, serially). A lane's own Lane() is itself.
  static constexpr int kLanes = 4;
  BlasHandle& Lane(int index);

  // fn(lane_index, lane) for every lane index in [0, kLanes), issued from kLanes host threads at
  // once (one thread a lane, so each lane's handle has one user): many small GEMMs cost cuBLAS
  // several microseconds of host time each, which the lanes then pay in parallel. Returns when
  // every call has returned (their work is queued, not done), with the first error. The lanes'
  // work is ordered with the default stream's as for Lane(). On a lane, runs fn(i, *this) for
  // each i in turn on the calling thread.
  absl::Status ForEachLane(const std::function<absl::Status(int, BlasHandle&)>& fn);

 private:
  BlasHandle(void* handle, GemmMath math, void* stream = nullptr)
      : handle_(handle), math_(math), stream_(stream) {}
  void* handle_;
  GemmMath math_;
  void* stream_;  // cudaStream_t of a lane; nullptr: the default stream
  std::unique_ptr<BlasHandle> lanes_[kLanes];
  std::unique_ptr<core::ThreadPool> lane_threads_;  // ForEachLane's, made on first use
};

// One operand: row-major storage with row stride ld (elements) and batch stride (elements).
struct GemmOperand {
  const void* data = nullptr;
  core::DType dtype = core::DType::kF32;  // kF32 or kBF16
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

struct BatchedGemmParams {
  GemmOperand a, b;
  void* c = nullptr;
  core::DType c_dtype = core::DType::kF32;
  int64_t ldc = 0, batch_stride_c = 0;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f, beta = 0.0f;
};

// a and b share a dtype; f32 inputs need an f32 c. InvalidArgument on a mismatch (leading
// dimensions too small, null pointers); Internal on a cuBLAS failure.
absl::Status BatchedGemm(BlasHandle& handle, const BatchedGemmParams& params);

}  // namespace v4rl::kernels::cuda
