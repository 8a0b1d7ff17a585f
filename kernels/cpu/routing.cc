#include "kernels/cpu/routing.h"

namespace v4rl::kernels::cpu {

template <typename T>
void RoutingWeightsRef(const T* scores, const int32_t* topk_idx, int64_t num_tokens,
                       int64_t num_experts, int64_t k, T route_scale, T denom_eps, T* weights) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* s = scores + t * num_experts;
    const int32_t* idx = topk_idx + t * k;
    // Sum of the picked scores, picks in order, then each pick's share.
    T sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += s[idx[j]];
    for (int64_t j = 0; j < k; ++j)
      weights[t * k + j] = s[idx[j]] / (sum + denom_eps) * route_scale;
  }
}

template <typename T>
void RoutingWeightsBackwardRef(const T* scores, const int32_t* topk_idx, int64_t num_tokens,
                               int64_t num_experts, int64_t k, T route_scale, T denom_eps,
                               const T* dweights, T* dscores) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* s = scores + t * num_experts;
    const int32_t* idx = topk_idx + t * k;
    const T* dw = dweights + t * k;
    // w_j = c·s_j / S: ds_j = c·dw_j / S (numerator) - c·Σ_i dw_i·s_i / S² (shared sum).
    T sum = 0;
    T weighted = 0;
    for (int64_t j = 0; j < k; ++j) {
      sum += s[idx[j]];
      weighted += dw[j] * s[idx[j]];
    }
    const T denom = sum + denom_eps;
    const T shared = route_scale * weighted / (denom * denom);
    for (int64_t j = 0; j < k; ++j) {
      dscores[t * num_experts + idx[j]] += route_scale * dw[j] / denom - shared;
    }
  }
}

#define V4RL_INSTANTIATE(T)                                                                       \
  template void RoutingWeightsRef<T>(const T*, const int32_t*, int64_t, int64_t, int64_t, T, T,   \
                                     T*);                                                         \
  template void RoutingWeightsBackwardRef<T>(const T*, const int32_t*, int64_t, int64_t, int64_t, \
                                             T, T, const T*, T*);
V4RL_INSTANTIATE(float)
V4RL_INSTANTIATE(double)
#undef V4RL_INSTANTIATE

}  // namespace v4rl::kernels::cpu
