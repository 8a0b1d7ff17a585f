// A V4 model with seeded random weights for tests that need no transformers reference:
// projections ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1²), biases / sinks ~ N(0, 0.5²), tid2eid rows
// of distinct experts. Same seed, same model on every machine.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/forward.h"
#include "model/params.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::model::testing {

inline Model RandomModel(const ModelConfig& config, uint64_t seed) {
  ModelWeights weights;
  uint64_t index = 0;
  VisitParams(config, &weights, /*include_mtp=*/true,
              [&](const ParamSpec& spec, core::Tensor* slot) {
                const uint64_t s = seed * 1000 + index++;
                if (spec.is_index_table) {
                  *slot = core::Tensor::Empty(core::DType::kI32, spec.shape);
                  const core::Rng rng(s);
                  std::vector<int32_t> experts(config.num_routed_experts);
                  for (int64_t r = 0; r < spec.shape[0]; ++r) {
                    std::iota(experts.begin(), experts.end(), 0);
                    // Partial Fisher-Yates: the first k ids of a per-row shuffle.
                    for (int64_t j = 0; j < spec.shape[1]; ++j) {
                      const int64_t pick =
                          j + static_cast<int64_t>(rng.Uniform(r * 64 + j) * (experts.size() - j));
                      std::swap(experts[j], experts[std::min<int64_t>(pick, experts.size() - 1)]);
                      slot->data<int32_t>()[r * spec.shape[1] + j] = experts[j];
                    }
                  }
                  return;
                }
                const std::string& name = spec.name;
                const bool is_norm = name.size() > 11 && name.find("norm.weight") != std::string::npos;
                if (is_norm) {
                  *slot = v4rl::testing::RandomNormal(spec.shape, s, 0.1f);
                  for (int64_t i = 0; i < slot->numel(); ++i) slot->data<float>()[i] += 1.0f;
                } else if (spec.shape.size() == 1) {
                  *slot = v4rl::testing::RandomNormal(spec.shape, s, 0.5f);
                } else {
                  const float fan_in = static_cast<float>(spec.shape.back());
                  *slot = v4rl::testing::RandomNormal(spec.shape, s, 1.0f / std::sqrt(fan_in));
                }
              });
  if (config.tie_word_embeddings) weights.head = weights.embed;
  return Model::Create(config, std::move(weights));
}

}  // namespace v4rl::model::testing
