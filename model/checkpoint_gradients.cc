#include "model/checkpoint_gradients.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "model/backward.h"
#include "model/checkpoint_names.h"
#include "model/params.h"

namespace v4rl::model {

using core::DType;
using core::Tensor;

absl::StatusOr<std::vector<NamedGradient>> CheckpointGradients(
    const ModelConfig& config, const ModelWeights& grads, const core::TensorDirectory& checkpoint) {
  std::map<std::string, std::string> keys;  // canonical name -> checkpoint key
  for (const auto& [key, location] : checkpoint.tensors())
    keys.emplace(CanonicalTensorName(key), key);
  // The trainable gradients by canonical name (VisitParams walks a mutable struct; the copy
  // shares the buffers).
  ModelWeights walk = grads;
  std::vector<ParamSpec> specs;
  std::map<std::string, Tensor> by_name;
  VisitParams(config, &walk, /*include_mtp=*/false, [&](const ParamSpec& spec, Tensor* slot) {
    if (!IsTrainable(spec)) return;
    specs.push_back(spec);
    by_name[spec.name] = *slot;
  });

  std::vector<NamedGradient> out;
  std::vector<std::string> missing;
  auto emit = [&](const std::string& canonical, Tensor tensor) {
    auto it = keys.find(canonical);
    if (it == keys.end()) {
      missing.push_back(canonical);
      return;
    }
    out.push_back({it->second, std::move(tensor)});
  };
  for (const ParamSpec& spec : specs) {
    const Tensor& grad = by_name[spec.name];
    if (!spec.is_routed_experts) {
      emit(spec.name, grad);
      continue;
    }
    // "<layer>ffn.experts.<w1|w2|w3>.weight", stacked [E, rows, cols].
    const std::string prefix = spec.name.substr(0, spec.name.rfind("experts.") + 8);
    const std::string proj = spec.name.substr(prefix.size(), 2);
    const int64_t num_experts = spec.shape[0], rows = spec.shape[1], cols = spec.shape[2];
    if (keys.count(absl::StrCat(prefix, 0, ".", proj, ".weight"))) {
      // DeepSeek naming: one tensor per expert.
      for (int64_t e = 0; e < num_experts; ++e) {
        emit(absl::StrCat(prefix, e, ".", proj, ".weight"),
             Tensor::CopyOf(grad.view().Select(0, e)));
      }
    } else if (proj == "w2") {
      emit(prefix + "down_proj", grad);
    } else if (proj == "w1") {
      // transformers' gate_up_proj [E, 2I, H]: each expert's w1 rows, then its w3 rows.
      const Tensor& up = by_name[prefix + "w3.weight"];
      Tensor merged = Tensor::Empty(DType::kF32, {num_experts, 2 * rows, cols});
      for (int64_t e = 0; e < num_experts; ++e) {
        const int64_t block = rows * cols;
        std::copy(grad.data<float>() + e * block, grad.data<float>() + (e + 1) * block,
                  merged.data<float>() + 2 * e * block);
        std::copy(up.data<float>() + e * block, up.data<float>() + (e + 1) * block,
                  merged.data<float>() + (2 * e + 1) * block);
      }
      emit(prefix + "gate_up_proj", std::move(merged));
    }  // w3 went out inside gate_up_proj with w1.
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("checkpoint %s has no key for the trainable parameter(s) %s",
                        checkpoint.files().empty() ? "(empty)" : checkpoint.files()[0]->path(),
                        absl::StrJoin(missing, ", ")));
  }
  return out;
}

}  // namespace v4rl::model
