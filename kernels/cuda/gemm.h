// Dense and per-expert GEMMs on the GPU through cuBLASLt: out = x · wᵀ with bf16 inputs, fp32
// accumulation and a bf16 or f32 output (the `production` precision of DESIGN.md §3).
//
// A GemmHandle owns the cuBLASLt handle, a workspace in device memory and a cache of the
// heuristic's algorithms and the matmul descriptors: one heuristic query per weight shape and
// power-of-two bucket of the row count M (row counts vary with every batch and expert), then a
// cheap check per exact M. Shapes cuBLASLt has no algorithm for (odd leading dimensions) fall
// back to cublasGemmEx with the same types. Work is queued on the launch stream (stream.h).
// Thread-safety: a handle is used by one thread at a time; create one per thread or stream.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor.h"

namespace v4rl::kernels::cuda {

class GemmHandle {
 public:
  // workspace_bytes: cuBLASLt scratch (32 MiB suits Hopper's split-K algorithms).
  static absl::StatusOr<std::unique_ptr<GemmHandle>> Create(int64_t workspace_bytes = 32 << 20);
  ~GemmHandle();
  GemmHandle(const GemmHandle&) = delete;
  GemmHandle& operator=(const GemmHandle&) = delete;

  struct Impl;
  Impl* impl() { return impl_.get(); }

 private:
  explicit GemmHandle(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// out = alpha · x · wᵀ (+ out when accumulate). x: [M, K] bf16 row view (rank 2, unit inner
// stride, any row stride); w: [N, K] bf16 row view; out: [M, N] bf16 or f32 row view, distinct
// from x and w. Device views. InvalidArgument on a mismatch; Internal on a cuBLAS failure.
absl::Status Gemm(GemmHandle& handle, const core::TensorView& x, const core::TensorView& w,
                  const core::TensorView& out, float alpha = 1.0f, bool accumulate = false);

// out[b] = x[b] · w[b]ᵀ for every b < batch in one strided-batched cuBLASLt call (the grouped
// low-rank output projection's o_groups GEMMs). x: [batch, M, K] bf16; w: [batch, N, K] bf16;
// out: [batch, M, N] bf16 or f32, distinct from x and w. Device views with a unit inner stride,
// a row stride of at least the row length and any batch stride (e.g. x = the [M, batch, K]
// activations transposed to [batch, M, K]). InvalidArgument on a mismatch; Internal on a cuBLAS
// failure.
absl::Status StridedBatchedGemm(GemmHandle& handle, const core::TensorView& x,
                                const core::TensorView& w, const core::TensorView& out);

// Routed experts: rows [offsets[e], offsets[e + 1]) of x go through expert e's weight.
// x: [P, K] bf16; w: [E, N, K] bf16 contiguous; out: [P, N] bf16 or f32; offsets: host array of
// E + 1 non-decreasing row offsets with offsets[0] = 0 and offsets[E] = P (plan/moe_dispatch.h).
// One cuBLASLt call per non-empty expert.
absl::Status GroupedGemm(GemmHandle& handle, const core::TensorView& x, const core::TensorView& w,
                         absl::Span<const int64_t> offsets, const core::TensorView& out);

}  // namespace v4rl::kernels::cuda
