// CPU reference of the MoE routing weights (spec §4.1) and their backward: the router scores of
// a token's picked experts, renormalised over the picks and multiplied by routed_scaling_factor.
//
// The picks themselves (top-k of score + bias, the hash layers' tid2eid row, or replayed ids)
// are inputs: selection is not differentiable, so gradients reach the scores only at the picked
// experts, through both the numerator and the normalising sum.
// Templated on the element type: float for training, double for the finite-difference checks.
// Thread-safety: reentrant; pure loops over tokens.
#pragma once

#include <cstdint>

namespace v4rl::kernels::cpu {

// weights[t, j] = scores[t, e_j] / (Σ_i scores[t, e_i] + denom_eps) · route_scale with
// e_j = topk_idx[t, j]. scores: [num_tokens, num_experts]; topk_idx: [num_tokens, k] i32, every
// id in [0, num_experts); weights: [num_tokens, k]. denom_eps: 1e-20 as transformers, 0 as the
// official code.
template <typename T>
void RoutingWeightsRef(const T* scores, const int32_t* topk_idx, int64_t num_tokens,
                       int64_t num_experts, int64_t k, T route_scale, T denom_eps, T* weights);

// Backward of RoutingWeightsRef: dweights [num_tokens, k]; dscores [num_tokens, num_experts],
// += (non-zero only at picked experts).
template <typename T>
void RoutingWeightsBackwardRef(const T* scores, const int32_t* topk_idx, int64_t num_tokens,
                               int64_t num_experts, int64_t k, T route_scale, T denom_eps,
                               const T* dweights, T* dscores);

}  // namespace v4rl::kernels::cpu
