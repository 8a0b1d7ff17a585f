#include "learner/optimizer.h"

#include <cmath>
#include <cstring>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/thread_pool.h"

namespace v4rl::learner {
namespace {

bool IsEmbeddingOrHead(const std::string& name) {
  return name == "embed.weight" || absl::EndsWith(name, "embed_tokens.weight") ||
         name == "head.weight" || name == "lm_head.weight";
}

// Router selection biases are moved by aux-loss-free balancing, hash tables are fixed.
bool IsNotTrainedByGradient(const std::string& name) {
  return absl::EndsWith(name, "gate.bias") || absl::EndsWith(name, "e_score_correction_bias") ||
         absl::EndsWith(name, "tid2eid");
}

// Learned positional biases of the compressors: additive vectors per slot, not linear maps.
bool IsPositionBias(const std::string& name) {
  return absl::EndsWith(name, ".ape") || absl::EndsWith(name, "position_bias");
}

}  // namespace

const char* OptimizerKindName(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kMuon: return "muon";
    case OptimizerKind::kAdamW: return "adamw";
    case OptimizerKind::kFrozen: return "frozen";
  }
  return "?";
}

ParameterAssignment AssignOptimizer(const std::string& name, absl::Span<const int64_t> shape) {
  if (IsNotTrainedByGradient(name)) {
    return {OptimizerKind::kFrozen, "router bias / hash table (not trained by gradient)"};
  }
  if (IsEmbeddingOrHead(name)) return {OptimizerKind::kAdamW, "embedding or head"};
  if (shape.size() <= 1) return {OptimizerKind::kAdamW, "vector (norm weight, mHC base/scale, sink)"};
  if (IsPositionBias(name)) return {OptimizerKind::kAdamW, "compressor position bias"};
  ParameterAssignment assignment{OptimizerKind::kMuon, "matrix"};
  assignment.rows = shape[shape.size() - 2];
  assignment.cols = shape[shape.size() - 1];
  assignment.num_matrices = 1;
  for (size_t d = 0; d + 2 < shape.size(); ++d) assignment.num_matrices *= shape[d];
  if (shape.size() >= 3) assignment.reason = "expert matrices, one Muon update each";
  // HF merges each expert's gate (w1) and up (w3) projections into [E, 2I, H]; they are two
  // matrices in the model, so each half gets its own orthogonalisation.
  if (absl::EndsWith(name, "gate_up_proj") && assignment.rows % 2 == 0) {
    assignment.rows /= 2;
    assignment.num_matrices *= 2;
    assignment.reason = "expert gate and up matrices, one Muon update each";
  }
  return assignment;
}

absl::StatusOr<Optimizer> Optimizer::Create(std::vector<TrainableParameter> parameters,
                                            const MuonOptions& muon, const AdamWOptions& adamw) {
  Optimizer optimizer;
  optimizer.muon_ = muon;
  optimizer.adamw_ = adamw;
  std::vector<std::string> problems;
  for (const TrainableParameter& p : parameters) {
    if (p.value.dtype != core::DType::kF32 || !p.value.is_contiguous() ||
        p.value.device != core::Device::kCpu) {
      problems.push_back(absl::StrFormat("%s: value must be a contiguous CPU f32 tensor, got %s",
                                         p.name, p.value.DebugString()));
      continue;
    }
    if (p.grad.dtype != core::DType::kF32 || !p.grad.is_contiguous() ||
        !p.grad.SameShape(p.value.shape_vector())) {
      problems.push_back(absl::StrFormat("%s: grad must be contiguous f32 %s, got %s", p.name,
                                         p.value.DebugString(), p.grad.DebugString()));
      continue;
    }
    const ParameterAssignment assignment = AssignOptimizer(p.name, p.value.shape_vector());
    const core::Shape shape = p.value.shape_vector();
    optimizer.first_state_.push_back(assignment.kind == OptimizerKind::kFrozen
                                         ? core::Tensor()
                                         : core::Tensor::Zeros(core::DType::kF32, shape));
    optimizer.second_state_.push_back(assignment.kind == OptimizerKind::kAdamW
                                          ? core::Tensor::Zeros(core::DType::kF32, shape)
                                          : core::Tensor());
    optimizer.assignments_.push_back(assignment);
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError("optimizer parameters: " + absl::StrJoin(problems, "; "));
  }
  optimizer.parameters_ = std::move(parameters);
  optimizer.step_tensor_ = core::Tensor::Zeros(core::DType::kI64, {1});
  return optimizer;
}

void Optimizer::Step(float lr) {
  ++step_;
  step_tensor_.data<int64_t>()[0] = step_;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    switch (assignments_[i].kind) {
      case OptimizerKind::kMuon: MuonStep(i, lr); break;
      case OptimizerKind::kAdamW: AdamWStep(i, lr * adamw_.lr_scale); break;
      case OptimizerKind::kFrozen: break;
    }
  }
}

void Optimizer::MuonStep(size_t index, float lr) {
  const TrainableParameter& p = parameters_[index];
  const ParameterAssignment& a = assignments_[index];
  float* value = p.value.data_as<float>();
  const float* grad = p.grad.data_as<float>();
  float* momentum = first_state_[index].data<float>();
  const int64_t matrix_size = a.rows * a.cols;
  const float scale = muon_.update_rms * std::sqrt(static_cast<float>(std::max(a.rows, a.cols)));
  const float decay = 1.0f - lr * muon_.weight_decay;
  std::vector<float> input(matrix_size), update(matrix_size);
  for (int64_t matrix = 0; matrix < a.num_matrices; ++matrix) {
    const int64_t offset = matrix * matrix_size;
    for (int64_t k = 0; k < matrix_size; ++k) {
      const float g = grad[offset + k];
      momentum[offset + k] = muon_.momentum * momentum[offset + k] + g;
      input[k] = muon_.nesterov ? muon_.momentum * momentum[offset + k] + g : momentum[offset + k];
    }
    HybridNewtonSchulz(input, a.rows, a.cols, absl::MakeSpan(update), muon_.newton_schulz);
    for (int64_t k = 0; k < matrix_size; ++k) {
      value[offset + k] = value[offset + k] * decay - lr * scale * update[k];
    }
  }
}

void Optimizer::AdamWStep(size_t index, float lr) {
  const TrainableParameter& p = parameters_[index];
  float* value = p.value.data_as<float>();
  const float* grad = p.grad.data_as<float>();
  float* m = first_state_[index].data<float>();
  float* v = second_state_[index].data<float>();
  const double correction1 = 1.0 - std::pow(static_cast<double>(adamw_.beta1), step_);
  const double correction2 = 1.0 - std::pow(static_cast<double>(adamw_.beta2), step_);
  const float decay = 1.0f - lr * adamw_.weight_decay;
  core::ThreadPool::Default().ParallelFor(0, p.value.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      m[k] = adamw_.beta1 * m[k] + (1.0f - adamw_.beta1) * grad[k];
      v[k] = adamw_.beta2 * v[k] + (1.0f - adamw_.beta2) * grad[k] * grad[k];
      const double m_hat = m[k] / correction1;
      const double v_hat = v[k] / correction2;
      value[k] = value[k] * decay -
                 lr * static_cast<float>(m_hat / (std::sqrt(v_hat) + adamw_.epsilon));
    }
  });
}

std::string Optimizer::Summary() const {
  std::string text;
  std::map<std::string, std::pair<int64_t, int64_t>> totals;  // kind -> (tensors, elements)
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const ParameterAssignment& a = assignments_[i];
    std::string detail = a.kind == OptimizerKind::kMuon
                             ? absl::StrFormat(" (%d x [%d, %d])", a.num_matrices, a.rows, a.cols)
                             : "";
    absl::StrAppendFormat(&text, "  %-56s %-18s -> %s%s: %s\n", parameters_[i].name,
                          parameters_[i].value.DebugString(), OptimizerKindName(a.kind), detail,
                          a.reason);
    auto& total = totals[OptimizerKindName(a.kind)];
    ++total.first;
    total.second += parameters_[i].value.numel();
  }
  for (const auto& [kind, total] : totals) {
    absl::StrAppendFormat(&text, "  %s: %d tensors, %d parameters\n", kind, total.first,
                          total.second);
  }
  return text;
}

std::vector<std::pair<std::string, core::TensorView>> Optimizer::StateTensors() const {
  std::vector<std::pair<std::string, core::TensorView>> tensors;
  tensors.emplace_back("optimizer.step", step_tensor_.view());
  for (size_t i = 0; i < parameters_.size(); ++i) {
    switch (assignments_[i].kind) {
      case OptimizerKind::kMuon:
        tensors.emplace_back(parameters_[i].name + ".muon_momentum", first_state_[i].view());
        break;
      case OptimizerKind::kAdamW:
        tensors.emplace_back(parameters_[i].name + ".adam_m", first_state_[i].view());
        tensors.emplace_back(parameters_[i].name + ".adam_v", second_state_[i].view());
        break;
      case OptimizerKind::kFrozen: break;
    }
  }
  return tensors;
}

absl::Status Optimizer::LoadState(
    const std::vector<std::pair<std::string, core::TensorView>>& tensors) {
  std::map<std::string, core::TensorView> by_name(tensors.begin(), tensors.end());
  std::vector<std::string> problems;
  const auto expected = StateTensors();
  for (const auto& [name, destination] : expected) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      problems.push_back(absl::StrFormat("missing %s", name));
    } else if (it->second.dtype != destination.dtype ||
               !it->second.SameShape(destination.shape_vector())) {
      problems.push_back(absl::StrFormat("%s: expected %s, got %s", name,
                                         destination.DebugString(), it->second.DebugString()));
    }
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError("optimizer state: " + absl::StrJoin(problems, "; "));
  }
  for (const auto& [name, destination] : expected) core::CopyTensor(by_name[name], destination);
  step_ = step_tensor_.data<int64_t>()[0];
  return absl::OkStatus();
}

double ClipGradientNorm(const std::vector<TrainableParameter>& parameters, double max_norm) {
  double sum_sq = 0;
  for (const TrainableParameter& p : parameters) {
    const float* g = p.grad.data_as<float>();
    for (int64_t k = 0; k < p.grad.numel(); ++k) sum_sq += static_cast<double>(g[k]) * g[k];
  }
  const double norm = std::sqrt(sum_sq);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (const TrainableParameter& p : parameters) {
      float* g = p.grad.data_as<float>();
      for (int64_t k = 0; k < p.grad.numel(); ++k) g[k] *= scale;
    }
  }
  return norm;
}

}  // namespace v4rl::learner
