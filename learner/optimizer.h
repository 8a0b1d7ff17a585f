// Muon + AdamW over a model's parameters, as DeepSeek-V4 trains: Muon for hidden matrices (each
// expert's matrices separately), AdamW for embeddings, the head, RMSNorm weights, the mHC static
// biases and gating factors and other vectors; router selection biases and hash tables are not
// trained by gradient.
//
// Muon step for one matrix W [n, m] with gradient G (momentum mu = 0.95, Nesterov):
//   M <- mu M + G;  O <- HybridNS(mu M + G) * update_rms * sqrt(max(n, m));
//   W <- W (1 - lr wd) - lr O
// (an orthogonal n x m matrix has RMS 1/sqrt(max(n, m)), so O has RMS update_rms = 0.18.)
// AdamW: bias-corrected Adam moments, decoupled weight decay W <- W (1 - lr wd).
//
// Ownership: the Optimizer keeps views of the parameters and gradients it was given (the model
// owns them) and owns its state tensors. Not thread-safe; Step parallelises internally.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "learner/newton_schulz.h"

namespace v4rl::learner {

enum class OptimizerKind { kMuon, kAdamW, kFrozen };
const char* OptimizerKindName(OptimizerKind kind);

struct ParameterAssignment {
  OptimizerKind kind;
  std::string reason;  // e.g. "rank-1 (norm weight, bias or gate)"
  // Muon only: the parameter viewed as num_matrices x [rows, cols].
  int64_t num_matrices = 0;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Decides the optimizer of a parameter from its name (HF or DeepSeek naming) and shape.
ParameterAssignment AssignOptimizer(const std::string& name, absl::Span<const int64_t> shape);

struct MuonOptions {
  float momentum = 0.95f;
  bool nesterov = true;
  float weight_decay = 0.1f;
  float update_rms = 0.18f;
  NewtonSchulzSchedule newton_schulz;
};

struct AdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float epsilon = 1e-8f;
  float weight_decay = 0.1f;
  float lr_scale = 1.0f;  // AdamW lr = lr_scale * the step's lr
};

struct TrainableParameter {
  std::string name;
  core::TensorView value;  // f32 CPU, contiguous
  core::TensorView grad;   // f32 CPU, contiguous, same shape
};

class Optimizer {
 public:
  // InvalidArgument when a parameter is not f32, not contiguous, or its grad differs in shape.
  static absl::StatusOr<Optimizer> Create(std::vector<TrainableParameter> parameters,
                                          const MuonOptions& muon, const AdamWOptions& adamw);

  // Applies one update with learning rate `lr` to every non-frozen parameter.
  void Step(float lr);

  int64_t step() const { return step_; }
  // One line per parameter: "name [shape] -> muon (4 x [64, 128])" and per-kind totals.
  std::string Summary() const;
  const std::vector<ParameterAssignment>& assignments() const { return assignments_; }

  // State as named tensors ("<param>.muon_momentum", "<param>.adam_m", "<param>.adam_v") plus
  // "optimizer.step" [1] i64, for checkpoints.
  std::vector<std::pair<std::string, core::TensorView>> StateTensors() const;
  // Restores from tensors written by StateTensors; every expected tensor must be present with
  // its shape (the error lists all that are missing or mis-shaped).
  absl::Status LoadState(const std::vector<std::pair<std::string, core::TensorView>>& tensors);

 private:
  Optimizer() = default;
  void MuonStep(size_t index, float lr);
  void AdamWStep(size_t index, float lr);

  std::vector<TrainableParameter> parameters_;
  std::vector<ParameterAssignment> assignments_;
  std::vector<core::Tensor> first_state_;   // Muon momentum or Adam m
  std::vector<core::Tensor> second_state_;  // Adam v (empty for Muon)
  core::Tensor step_tensor_;
  int64_t step_ = 0;
  MuonOptions muon_;
  AdamWOptions adamw_;
};

// Scales all gradients so their global L2 norm is at most max_norm; returns the norm before
// clipping. max_norm <= 0 only measures.
double ClipGradientNorm(const std::vector<TrainableParameter>& parameters, double max_norm);

}  // namespace v4rl::learner
