// The whole-model backward on one GPU in the fp32 `reference` precision (issue 9): the device
// twin of model/backward.h's Backward, op for op (same decomposition, same order), every op a
// kernels/cuda launcher (linear_backward, elementwise_backward, attention_backward,
// compressor_backward, mhc_backward, expert_backward, model_backward_misc). Parameters are
// uploaded once in f32; gradients come back in the ZeroGradients layout and are ADDED to the
// caller's host gradients (micro-batches accumulate as on the CPU).
//
// Activations: the fp32 activations of the CPU reference Forward (save_activations), uploaded one
// block at a time. CudaModel's forward runs in the bf16 `production` precision (bf16 weights and
// activations), so it cannot feed a backward meant to match the CPU to 1e-4; a CudaModel
// save-activations hook filling the same per-block device tensors is the next step (see the
// README of issue 9 in the report). Routing replay: the forward's routing (replayed or not) is
// what the saved activations hold, so the backward follows it as the CPU does.
// What is trained: as model/backward.h (no gradient to tid2eid, gate.bias, the indexer, MTP).
// Built only with V4RL_WITH_CUDA (library v4rl_model_cuda_train).
// Thread-safety: one Backward at a time per CudaBackward (it owns a cuBLAS handle).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/backward.h"
#include "model/forward.h"
#include "model/next_token_loss.h"
#include "model/weights.h"

namespace v4rl::model {

class CudaBackward {
 public:
  // Uploads `model`'s parameters (f32) to the current device; `model` must outlive the result.
  // Errors: no device, out of memory, parameters that are not floating point.
  static absl::StatusOr<std::unique_ptr<CudaBackward>> Create(const Model& model);
  ~CudaBackward();
  CudaBackward(const CudaBackward&) = delete;
  CudaBackward& operator=(const CudaBackward&) = delete;

  // As model::Backward without recompute: forward from the CPU Forward with return_hidden,
  // return_streams and save_activations; dlogits [B, T, V] f32 host. Adds to `grads` (host, from
  // ZeroGradients). InvalidArgument when `forward` lacks saved activations; Internal on CUDA
  // errors.
  absl::Status Backward(const core::TensorView& input_ids, const ForwardOutput& forward,
                        const core::TensorView& dlogits, ModelWeights* grads);

  struct Impl;

 private:
  explicit CudaBackward(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// NextTokenLossAndGradients with the backward on the GPU (the forward and the loss on the CPU in
// fp32). options.backward.recompute is not supported (InvalidArgument).
absl::StatusOr<NextTokenLossResult> CudaNextTokenLossAndGradients(
    CudaBackward& backward, const Model& model, const core::TensorView& input_ids,
    const NextTokenLossOptions& options = {});

}  // namespace v4rl::model
