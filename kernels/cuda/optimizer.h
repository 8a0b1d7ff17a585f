// Muon and AdamW steps on the GPU, the arithmetic of learner/optimizer.cc (CPU) on device tensors:
//
// Muon, per matrix W [rows, cols] with gradient G and momentum M (all f32):
//   M <- mu M + G;  O <- HybridNS(nesterov ? mu M + G : M) · update_rms · sqrt(max(rows, cols));
//   W <- W (1 - lr wd) - lr O
// HybridNS (learner/newton_schulz.h): Frobenius-normalise, then iterations
// X <- a X + (b A + c A²) X, A = X Xᵀ, on the wide orientation (tall matrices transposed). Its
// GEMMs are cuBLAS strided-batched over the `count` matrices of a stacked parameter (experts
// [E, rows, cols]), in f32 (the `reference` precision, exact f32 GEMMs) or bf16 (X, A and the
// polynomial stored in bf16 with fp32 accumulation, as PyTorch Muon implementations do).
// AdamW: bias-corrected moments and decoupled weight decay, one fused elementwise kernel.
//
// Temporaries come from cudaMallocAsync on the default stream (stream-ordered, no sync).
// Thread-safety: as the BlasHandle; work is queued on the default stream.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"

namespace v4rl::kernels::cuda {

struct NewtonSchulzParams {
  int fast_iterations = 8;
  float fast_a = 3.4445f, fast_b = -4.7750f, fast_c = 2.0315f;
  int settle_iterations = 2;
  float settle_a = 2.0f, settle_b = -1.5f, settle_c = 0.5f;
  float norm_epsilon = 1e-7f;
  bool bf16 = true;  // bf16 GEMMs (production) or exact f32 (reference)
};

// out [count, rows, cols] f32 <- HybridNS of each in [count, rows, cols] f32 (contiguous device
// views; out may be in).
absl::Status NewtonSchulz(BlasHandle& handle, const core::TensorView& in,
                          const core::TensorView& out, const NewtonSchulzParams& params);

struct MuonParams {
  float lr = 0;
  float momentum = 0.95f;
  bool nesterov = true;
  float weight_decay = 0.1f;
  float update_rms = 0.18f;
  NewtonSchulzParams newton_schulz;
};

// value, grad, momentum: [count, rows, cols] f32 contiguous device views of one parameter viewed
// as `count` matrices (ParameterAssignment's num_matrices x [rows, cols]).
absl::Status MuonStep(BlasHandle& handle, const core::TensorView& value,
                      const core::TensorView& grad, const core::TensorView& momentum,
                      const MuonParams& params);

struct AdamWParams {
  float lr = 0;  // the AdamW learning rate (lr_scale already applied)
  float beta1 = 0.9f, beta2 = 0.95f, epsilon = 1e-8f, weight_decay = 0.1f;
  int64_t step = 1;  // the step being taken, >= 1 (bias corrections)
};

// value, grad, m, v: equal-shaped f32 contiguous device views.
absl::Status AdamWStep(const core::TensorView& value, const core::TensorView& grad,
                       const core::TensorView& m, const core::TensorView& v,
                       const AdamWParams& params);

}  // namespace v4rl::kernels::cuda
