#include "model/init.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "model/params.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

// Which rule of a scheme a parameter follows, from its canonical name.
enum class Kind { kEmbed, kHead, kNorm, kMhcFn, kMhcBase, kMhcScale, kSink, kApe, kRouterBias,
                  kExpertUpGate, kExpertDown, kMatrix };

Kind KindOf(const ParamSpec& spec) {
  const std::string& name = spec.name;
  if (name == "embed.weight") return Kind::kEmbed;
  if (name == "head.weight") return Kind::kHead;
  if (absl::EndsWith(name, "norm.weight")) return Kind::kNorm;
  if (absl::EndsWith(name, "_fn")) return Kind::kMhcFn;
  if (absl::EndsWith(name, "_base")) return Kind::kMhcBase;
  if (absl::EndsWith(name, "_scale")) return Kind::kMhcScale;
  if (absl::EndsWith(name, "attn_sink")) return Kind::kSink;
  if (absl::EndsWith(name, ".ape")) return Kind::kApe;
  if (absl::EndsWith(name, "gate.bias")) return Kind::kRouterBias;
  if (spec.is_routed_experts) {
    return absl::EndsWith(name, "w2.weight") ? Kind::kExpertDown : Kind::kExpertUpGate;
  }
  return Kind::kMatrix;
}

Tensor Normal(const core::Shape& shape, const core::Rng& rng, double mean, double std) {
  Tensor t = Tensor::Empty(DType::kF32, shape);
  // Element i gets draw i whatever the thread count: the pool only makes big models fast.
  rng.FillNormal(t.view(), static_cast<float>(mean), static_cast<float>(std),
                 &core::ThreadPool::Default());
  return t;
}

Tensor Uniform(const core::Shape& shape, const core::Rng& rng, double low, double high) {
  Tensor t = Tensor::Empty(DType::kF32, shape);
  rng.FillUniform(t.view(), static_cast<float>(low), static_cast<float>(high),
                  &core::ThreadPool::Default());
  return t;
}

Tensor Constant(const core::Shape& shape, float value) {
  Tensor t = Tensor::Empty(DType::kF32, shape);
  std::fill(t.data<float>(), t.data<float>() + t.numel(), value);
  return t;
}

// [V, k] i32: row r holds the first k ids of a seeded Fisher-Yates shuffle of the experts.
Tensor ExpertTable(const core::Shape& shape, int64_t num_experts, const core::Rng& rng) {
  Tensor t = Tensor::Empty(DType::kI32, shape);
  const int64_t rows = shape[0], k = shape[1];
  std::vector<int32_t> experts(num_experts);
  for (int64_t r = 0; r < rows; ++r) {
    std::iota(experts.begin(), experts.end(), 0);
    for (int64_t j = 0; j < k; ++j) {
      const uint64_t counter = static_cast<uint64_t>(r * k + j);
      const int64_t pick =
          j + std::min<int64_t>(static_cast<int64_t>(rng.UniformDouble(counter) * (num_experts - j)),
                                num_experts - j - 1);
      std::swap(experts[j], experts[pick]);
      t.data<int32_t>()[r * k + j] = experts[j];
    }
  }
  return t;
}

Tensor TransformersInit(const ParamSpec& spec, const core::Rng& rng, double std) {
  switch (KindOf(spec)) {
    case Kind::kNorm:
    case Kind::kMhcScale: return Constant(spec.shape, 1.0f);
    case Kind::kMhcBase:
    case Kind::kSink:
    case Kind::kApe:
    case Kind::kRouterBias: return Constant(spec.shape, 0.0f);
    default: return Normal(spec.shape, rng, 0.0, std);
  }
}

Tensor ExerciseInit(const ParamSpec& spec, const ModelConfig& c, const core::Rng& rng) {
  const double hidden = static_cast<double>(c.hidden_size);
  switch (KindOf(spec)) {
    case Kind::kEmbed: return Normal(spec.shape, rng, 0.0, 1.0);
    case Kind::kHead: return Normal(spec.shape, rng, 0.0, 1.0 / std::sqrt(hidden));
    case Kind::kNorm: return Normal(spec.shape, rng, 1.0, 0.1);
    case Kind::kMhcFn:
      return Normal(spec.shape, rng, 0.0, 1.0 / std::sqrt(c.hc_mult * hidden));
    case Kind::kMhcBase: return Normal(spec.shape, rng, 0.0, 0.5);
    case Kind::kMhcScale: return Uniform(spec.shape, rng, 0.5, 1.5);
    case Kind::kSink: return Normal(spec.shape, rng, 0.0, 1.0);
    case Kind::kApe: return Normal(spec.shape, rng, 0.0, 0.5);
    case Kind::kRouterBias: return Normal(spec.shape, rng, 0.0, 0.3);
    case Kind::kExpertUpGate: return Normal(spec.shape, rng, 0.0, 4.0 / std::sqrt(hidden));
    case Kind::kExpertDown:
      return Normal(spec.shape, rng, 0.0, 0.5 / std::sqrt(static_cast<double>(spec.shape.back())));
    case Kind::kMatrix:
      return Normal(spec.shape, rng, 0.0, 1.0 / std::sqrt(static_cast<double>(spec.shape.back())));
  }
  return Tensor();
}

}  // namespace

ModelWeights InitWeights(const ModelConfig& config, const InitOptions& options) {
  ModelWeights weights;
  uint64_t index = 0;
  VisitParams(config, &weights, options.include_mtp,
              [&](const ParamSpec& spec, Tensor* slot) {
                const core::Rng rng(options.seed, index++);
                if (spec.is_index_table) {
                  *slot = ExpertTable(spec.shape, config.num_routed_experts, rng);
                } else if (options.scheme == InitScheme::kTransformers) {
                  *slot = TransformersInit(spec, rng, options.std);
                } else {
                  *slot = ExerciseInit(spec, config, rng);
                }
              });
  if (config.tie_word_embeddings) weights.head = weights.embed;
  return weights;
}

Model RandomModel(const ModelConfig& config, const InitOptions& options) {
  return Model::Create(config, InitWeights(config, options));
}

}  // namespace v4rl::model
