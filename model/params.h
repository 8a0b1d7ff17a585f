// The parameter inventory of a V4 model: canonical names (DeepSeek's hub names; routed experts
// as one stacked tensor per projection, "layers.N.ffn.experts.w1.weight" [E, I, H]), logical
// shapes, and where each lives in ModelWeights. One walk (VisitParams) serves the loader, the
// parameter count, and later the optimizer and checkpoint writer, so they cannot disagree.
// Thread-safety: pure functions.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace v4rl::model {

struct ModelWeights;

struct ParamSpec {
  std::string name;                // canonical name
  core::Shape shape;               // logical (dequantised) shape
  bool is_index_table = false;     // tid2eid: integer expert ids [V, k], not trained
  bool is_routed_experts = false;  // stacked [E, ...] routed expert projections
};

// Calls visit(spec, slot) for every parameter of `config` in a fixed order: embed, head (unless
// tied), norm, hc_head, then each layer, then the MTP blocks when include_mtp. `slot` points into
// `weights`, or is nullptr when weights == nullptr (shape-only walks).
void VisitParams(const ModelConfig& config, ModelWeights* weights, bool include_mtp,
                 const std::function<void(const ParamSpec&, core::Tensor*)>& visit);

// The specs alone (no allocation).
std::vector<ParamSpec> ModelParamSpecs(const ModelConfig& config, bool include_mtp);

}  // namespace v4rl::model
