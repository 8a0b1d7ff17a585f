// The loss and gradients of a supervised fine-tuning step on the GPU (`v4rl sft --device cuda`):
// model::CudaBackward's fp32 forward (exact f32 GEMMs, or bf16 tensor-core ones on request), the
// completion-masked cross entropy and the
// backward, all on the device (model/backward_cuda.h CudaMaskedNextTokenLoss); the gradients come
// back to the host, where the trainer's Muon/AdamW step updates the host model; the next call
// refreshes the device parameters from it. Same loss as the CPU backend to fp32 summation order.
// Built only with V4RL_WITH_CUDA (library v4rl_learner_cuda).
// Thread-safety: one call at a time.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/cuda/blas.h"
#include "learner/sft_trainer.h"
#include "model/forward.h"

namespace v4rl::learner {

// Uploads `model`'s parameters (f32) to the current device; `model` must outlive the backend and
// be the one passed to every LossAndGradients call. gemm_math as model::CudaBackward::Create
// (exact f32, or bf16 tensor-core GEMMs). Errors: no device, out of memory.
absl::StatusOr<std::unique_ptr<SftGradientBackend>> MakeCudaSftGradientBackend(
    const model::Model& model, kernels::cuda::GemmMath gemm_math);

}  // namespace v4rl::learner
