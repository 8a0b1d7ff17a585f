#include "learner/sft_step_cuda.h"

#include <utility>

#include "core/status.h"
#include "model/backward_cuda.h"

namespace v4rl::learner {
namespace {

class CudaSftGradientBackend : public SftGradientBackend {
 public:
  CudaSftGradientBackend(const model::Model& model, std::unique_ptr<model::CudaBackward> gpu)
      : model_(&model), gpu_(std::move(gpu)) {}

  absl::StatusOr<double> LossAndGradients(const model::Model& model, const SftBatch& batch,
                                          model::ModelWeights* grads) override {
    if (&model != model_) {
      return absl::InvalidArgumentError(
          "the CUDA SFT backend serves the model it was created from only");
    }
    // No target (one-token rows, an all-prompt batch): loss 0 and no gradient, as the CPU's.
    if (batch.input_ids.size(1) < 2 || batch.num_target_tokens == 0) return 0.0;
    // The optimizer changed the host weights since the last call.
    if (!first_call_) V4RL_RETURN_IF_ERROR(gpu_->UpdateWeights());
    first_call_ = false;
    return model::CudaMaskedNextTokenLoss(*gpu_, model, batch.input_ids.view(),
                                          batch.loss_mask.view(), model::ForwardOptions(), grads);
  }

 private:
  const model::Model* model_;
  std::unique_ptr<model::CudaBackward> gpu_;
  bool first_call_ = true;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SftGradientBackend>> MakeCudaSftGradientBackend(
    const model::Model& model, kernels::cuda::GemmMath gemm_math) {
  V4RL_ASSIGN_OR_RETURN(std::unique_ptr<model::CudaBackward> gpu,
                        model::CudaBackward::Create(model, gemm_math));
  return std::unique_ptr<SftGradientBackend>(
      std::make_unique<CudaSftGradientBackend>(model, std::move(gpu)));
}

}  // namespace v4rl::learner
