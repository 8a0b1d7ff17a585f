#include "model/flops.h"

#include <algorithm>

namespace v4rl::model {

ForwardFlops ForwardFlopsPerToken(const ModelConfig& c, int64_t seq_len) {
  const double hidden = static_cast<double>(c.hidden_size), n = static_cast<double>(c.hc_mult);
  const double qkv_width = static_cast<double>(c.num_heads) * c.head_dim;
  double projections = 0, attention = 0, indexer = 0;  // multiply-adds
  // Mean over t < seq_len of f(t).
  auto mean_over_positions = [&](auto f) {
    double sum = 0;
    for (int64_t t = 0; t < seq_len; ++t) sum += static_cast<double>(f(t));
    return sum / static_cast<double>(std::max<int64_t>(seq_len, 1));
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const AttentionType type = c.layer_types[l];
    projections += 2 * (2 + n) * n * (n * hidden);
    projections += hidden * c.q_lora_rank + static_cast<double>(c.q_lora_rank) * qkv_width +
                   hidden * c.head_dim + qkv_width * c.o_lora_rank +
                   static_cast<double>(c.o_groups) * c.o_lora_rank * hidden;
    const int64_t ratio = c.CompressRatio(type);
    const bool csa = type == AttentionType::kCompressedSparse;
    if (ratio > 0) projections += 2 * hidden * (csa ? 2 : 1) * c.head_dim;
    const double keys = mean_over_positions([&](int64_t t) {
      const int64_t window = std::min(t + 1, c.sliding_window);
      if (ratio == 0) return window;
      const int64_t visible = (t + 1) / ratio;
      return window + (csa ? std::min(c.index_topk, visible) : visible);
    });
    attention += qkv_width * 2 * keys;
    if (csa) {
      const double ih = static_cast<double>(c.index_n_heads),
                   id = static_cast<double>(c.index_head_dim);
      indexer += static_cast<double>(c.q_lora_rank) * ih * id + hidden * ih + 2 * hidden * 2 * id;
      indexer += ih * id * mean_over_positions([&](int64_t t) { return (t + 1) / ratio; });
    }
    projections += hidden * c.num_routed_experts +
                   static_cast<double>(c.num_experts_per_tok + c.num_shared_experts) * 3 * hidden *
                       c.moe_intermediate_size;
  }
  projections += n * (n * hidden) + hidden * c.vocab_size;
  return {2 * projections, 2 * attention, 2 * indexer};
}

std::string ForwardFlopsFormula() {
  return "FLOPs/token = 2 x multiply-adds; per layer: mHC 2(2+n)n*nH + attention "
         "Hq+q*nh*D+H*D+nh*D*Ro+G*Ro*H + compressor 2H*Dc + core nh*D*2*keys(t) + [CSA indexer "
         "q*ih*id+H*ih+4H*id+ih*id*floor((t+1)/m)] + MoE H*E+(k+shared)*3H*I; plus n*nH + H*V; "
         "keys(t) = min(t+1, window) + compressed keys, averaged over t < T; training = "
         "3 x (all but the indexer) + the indexer";
}

}  // namespace v4rl::model
