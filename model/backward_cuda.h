// The fp32 `reference` training path on one GPU (issue 9): forward with saved activations, the
// whole-model backward, and a refresh of the parameters after an optimizer step; optionally with
// every GEMM on bf16 tensor cores (GemmMath::kBf16Inputs: f32 storage, inputs rounded to bf16,
// fp32 accumulation), attention's products included: bf16 copies of q, kv and the compressed
// entries through the prefill's tensor-core kernel in the forward (f32 output and lse saved) and
// through SparseAttentionBackward's tensor-core kernel in the backward (with a bf16 copy of the
// output gradient). Each pass is the device twin of the CPU reference, op for op (same
// decomposition, order):
//  - Forward (model/forward_cuda_reference.cc): model/forward.h's Forward with f32 cuBLAS GEMMs
//    and the kernels/cuda launchers; the ForwardOutput holds device tensors (f32, i32 for index
//    tensors) in the fields and shapes the CPU fills, so Backward reads them without a copy.
//    The MoE dispatch plan is built on the host from the routed ids (one device-to-host copy a
//    layer), as the CPU builds it.
//  - Backward (model/backward_cuda.cc): model/backward.h's Backward without recompute, every op
//    a kernels/cuda launcher (linear_backward, elementwise_backward, attention_backward,
//    compressor_backward, mhc_backward, expert_backward, model_backward_misc). Gradients come back
//    in the ZeroGradients layout and are ADDED to the caller's host gradients (micro-batches
//    accumulate as on the CPU). It also takes the host activations of the CPU Forward.
//  - UpdateWeights: re-uploads the parameters of the Model this was created from (the optimizer
//    updates the host Model between steps).
// CudaModel (model/forward_cuda.h) is the bf16 `production` forward; it cannot feed a backward
// meant to match the CPU to 1e-4, which is why this class has its own fp32 forward.
// Routing replay: the forward's routing (replayed or not) is what the saved activations hold, so
// the backward follows it as the CPU does.
// What is trained: as model/backward.h (no gradient to tid2eid, gate.bias, the indexer, MTP).
// Memory: parameters once in f32 on the device, plus every block's activations in f32 between
// Forward and Backward (the CPU's save_activations footprint, on the device).
// Built only with V4RL_WITH_CUDA (library v4rl_model_cuda_train).
// Thread-safety: one call at a time per CudaBackward (it owns a cuBLAS handle).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"
#include "model/backward.h"
#include "model/forward.h"
#include "model/next_token_loss.h"
#include "model/weights.h"

namespace v4rl::model {

class CudaBackward {
 public:
  // Uploads `model`'s parameters to the current device (f32; tid2eid i32); `model` must outlive
  // the result. gemm_math: every GEMM of both passes (and the loss head) in exact f32 (the
  // reference precision this class is tested to, 1e-4 of the CPU) or on bf16 tensor cores with
  // inputs rounded to bf16 and fp32 accumulation (the arithmetic of a bf16 autocast Linear;
  // storage and every other op stay f32). Errors: no device, out of memory, parameters that are
  // not floating point.
  static absl::StatusOr<std::unique_ptr<CudaBackward>> Create(
      const Model& model, kernels::cuda::GemmMath gemm_math = kernels::cuda::GemmMath::kExactF32);
  ~CudaBackward();
  CudaBackward(const CudaBackward&) = delete;
  CudaBackward& operator=(const CudaBackward&) = delete;

  // As model::Forward (same options and InvalidArgument errors: input_ids CPU i32/i64 [B, T],
  // ids in the vocabulary, routing_replay per layer contiguous CPU i32 [B, T, k] with ids in
  // [0, num_routed_experts)) on the device. logits [B, T, V], hidden, streams and every
  // activation are device tensors (f32; topk_idx and indexer.topk i32; the MoE dispatch plan built
  // on the device: moe.device_offsets, device_slots, device_pick_of_slot, moe.plan left empty;
  // under GemmMath::kBf16Inputs the activations only products read are bf16: the mHC's normed,
  // attn_in, ffn_in, qr, q, kv, o, the compressed entries, expert_x, shared_act, and the
  // residual streams are stored in bf16: streams, streams_in, streams_mid);
  // routed_experts (return_routing) are CPU i32 [B, T, k], the form routing_replay takes.
  // Internal on CUDA errors.
  absl::StatusOr<ForwardOutput> Forward(const core::TensorView& input_ids,
                                        const ForwardOptions& options = {});

  // As model::Backward without recompute. input_ids: CPU i32/i64 [B, T]; forward: from Forward
  // above or from the CPU Forward, with return_hidden, return_streams and save_activations;
  // dlogits: [B, T, V] contiguous, f32 on the host, f32 or bf16 on the device. The head's GEMMs
  // read device bf16 dlogits as they are under GemmMath::kBf16Inputs (f32 ones are rounded to a
  // bf16 copy there) and a widened f32 copy of them under kExactF32. Adds to `grads` (host, from
  // ZeroGradients). InvalidArgument when dlogits has another dtype, shape or layout, when `forward`
  // lacks saved activations or holds a device tensor that is not contiguous f32/i32; Internal on
  // CUDA errors.
  absl::Status Backward(const core::TensorView& input_ids, const ForwardOutput& forward,
                        const core::TensorView& dlogits, ModelWeights* grads);

  // Backward without the host round trip: the gradients as f32 device tensors in the
  // ZeroGradients layout (a tied head shares the embedding's tensor), for an optimizer on the
  // device and for timing the backward alone. Same arguments and errors as Backward.
  absl::StatusOr<ModelWeights> DeviceGradients(const core::TensorView& input_ids,
                                               const ForwardOutput& forward,
                                               const core::TensorView& dlogits);

  // Copies the current values of the Model's parameters into the device copies (in place: the
  // device buffers stay). Call after every optimizer step on the host Model. InvalidArgument for a
  // parameter whose dtype changed to a non-floating one; Internal on CUDA errors.
  absl::Status UpdateWeights();

  // The GEMM math this was created with (Create's gemm_math).
  kernels::cuda::GemmMath gemm_math() const;

  struct Impl;

 private:
  explicit CudaBackward(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A next-token cross entropy on the GPU weighted per position: loss = -Σ mask[b, t] ·
// log p(ids[b, t+1] | ids[b, ≤ t]) / Σ mask (each sequence's last position must have mask 0;
// supervised fine-tuning masks the prompt), by Forward (forward_options with return_hidden,
// return_streams and save_activations forced on), kernels/cuda MaskedCrossEntropy and Backward; the
// gradients are ADDED to *grads (ZeroGradients layout). Under GemmMath::kBf16Inputs the loss
// kernel writes dlogits in bf16, the dtype the head's GEMMs read; else in f32 over the logits.
// input_ids: [B, T] i32/i64 host, T >= 2; loss_mask: [B, T] f32 host. `model` is the Model
// `backward` was created from. routed_experts (optional) receives Forward's routed ids.
absl::StatusOr<double> CudaMaskedNextTokenLoss(CudaBackward& backward, const Model& model,
                                               const core::TensorView& input_ids,
                                               const core::TensorView& loss_mask,
                                               const ForwardOptions& forward_options,
                                               ModelWeights* grads,
                                               std::vector<core::Tensor>* routed_experts = nullptr);

// The same loss with the gradients left on the device: *device_grads is replaced by
// DeviceGradients' f32 device tensors (no host copy).
absl::StatusOr<double> CudaMaskedNextTokenLossOnDevice(
    CudaBackward& backward, const Model& model, const core::TensorView& input_ids,
    const core::TensorView& loss_mask, const ForwardOptions& forward_options,
    ModelWeights* device_grads);

// The loss_mask of a plain next-token loss: f32 host [batch, seq_len], 1 at every position but
// each sequence's last.
core::Tensor NextTokenLossMask(int64_t batch, int64_t seq_len);

// NextTokenLossAndGradients on the GPU: Forward, the mean next-token cross entropy
// (kernels/cuda/token_losses.h MaskedCrossEntropy; the loss summed on the host in double, within
// fp32 rounding of the CPU's) and Backward, nothing of the forward on the CPU. `model` is the
// Model `backward` was created from. options.backward.recompute is not supported
// (InvalidArgument); the rest as NextTokenLossAndGradients.
absl::StatusOr<NextTokenLossResult> CudaNextTokenLossAndGradients(
    CudaBackward& backward, const Model& model, const core::TensorView& input_ids,
    const NextTokenLossOptions& options = {});

}  // namespace v4rl::model
