// Rollout routing -> trajectory-store routing (keep-routing records, DESIGN.md §1).
//
// rollout::GenerationResult::routed_experts is position-major over every position fed to the
// model and every layer: [prompt_len + n - 1, num_layers, k], row prompt_len - 1 + j being the
// forward that produced completion token j. The store (store/trajectory.h, RoutingChunk) keeps,
// per completion token, the learned-routing layers only, layer-major: [num_moe_layers, n, k],
// hash-routed layers left out (their experts are a fixed function of the token id). Completion
// token j is stored with row prompt_len - 1 + j, the routing of the step that sampled it; the
// prompt-only rows 0 .. prompt_len - 2 are not stored (the store has no place for them).
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/config.h"
#include "store/trajectory.h"

namespace v4rl::learner {

// The store's routing shape for `config`: its learned-routing (kMoe) layers, k, E; all zero when
// the model has no learned-routing layer.
store::RoutingShape StoreRoutingShape(const model::ModelConfig& config);

// [num_moe_layers, num_tokens, k] ids for the store from rollout routing `routed_experts`
// ([prompt_len + num_tokens - 1, num_layers, k] i32). InvalidArgument naming the value:
// prompt_len < 1 or num_tokens < 1, a size other than (prompt_len + num_tokens - 1) * num_layers
// * k, an id outside [0, num_routed_experts).
absl::StatusOr<std::vector<uint16_t>> CompletionRoutingForStore(
    const model::ModelConfig& config, absl::Span<const int32_t> routed_experts,
    int64_t prompt_len, int64_t num_tokens);

}  // namespace v4rl::learner
