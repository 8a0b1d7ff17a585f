#include "learner/routing_record.h"

#include "absl/strings/str_format.h"

namespace v4rl::learner {

store::RoutingShape StoreRoutingShape(const model::ModelConfig& config) {
  int32_t learned = 0;
  for (model::MlpType type : config.mlp_layer_types) learned += type == model::MlpType::kMoe;
  if (learned == 0) return {};
  return {.num_moe_layers = learned,
          .num_topk = static_cast<int32_t>(config.num_experts_per_tok),
          .num_experts = static_cast<int32_t>(config.num_routed_experts)};
}

absl::StatusOr<std::vector<uint16_t>> CompletionRoutingForStore(
    const model::ModelConfig& config, absl::Span<const int32_t> routed_experts,
    int64_t prompt_len, int64_t num_tokens) {
  if (prompt_len < 1 || num_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "routing: prompt_len %d and num_tokens %d must both be >= 1", prompt_len, num_tokens));
  }
  const int64_t num_layers = config.num_layers;
  const int64_t k = config.num_experts_per_tok;
  const int64_t num_positions = prompt_len + num_tokens - 1;
  const int64_t want = num_positions * num_layers * k;
  if (static_cast<int64_t>(routed_experts.size()) != want) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "routing: %d expert ids, expected (prompt_len %d + num_tokens %d - 1) * num_layers %d * "
        "k %d = %d",
        routed_experts.size(), prompt_len, num_tokens, num_layers, k, want));
  }
  const store::RoutingShape shape = StoreRoutingShape(config);
  std::vector<uint16_t> out(static_cast<size_t>(shape.num_moe_layers * num_tokens * k));
  int64_t stored_layer = 0;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    if (config.mlp_layer_types[layer] != model::MlpType::kMoe) continue;  // hash: not recorded
    // Completion token j <- position prompt_len - 1 + j, the forward step that sampled it.
    for (int64_t j = 0; j < num_tokens; ++j) {
      const int64_t row = prompt_len - 1 + j;
      for (int64_t e = 0; e < k; ++e) {
        const int32_t id = routed_experts[(row * num_layers + layer) * k + e];
        if (id < 0 || id >= config.num_routed_experts) {
          return absl::InvalidArgumentError(
              absl::StrFormat("routing: position %d layer %d: expert id %d outside [0, %d)", row,
                              layer, id, config.num_routed_experts));
        }
        out[(stored_layer * num_tokens + j) * k + e] = static_cast<uint16_t>(id);
      }
    }
    ++stored_layer;
  }
  return out;
}

}  // namespace v4rl::learner
