// Floating-point operations of the V4 forward per token, from the config alone: the numerator of
// model-FLOPs utilisation (MFU) in the training and prefill benchmarks (issue 9). One
// multiply-add counts 2; elementwise work (norms, RoPE, SwiGLU, softmax, Sinkhorn) is not
// counted, as MFU conventions do. Per token of a T-token sequence, averaged over positions
// t = 0 .. T-1:
//   per layer  mHC mixes      2 sites x (2+n)n x nH
//              attention      Hq + q(nh D) + H D + (nh D) R_o + G R_o H   (wq_a wq_b wkv wo_a wo_b)
//              compressor     2 x H x D_c   (wkv, wgate; D_c = 2D for CSA's overlap, D for HCA)
//              core           nh D x 2 x keys(t)   (QKᵀ and PV; keys = min(t+1, window) +
//                             CSA: min(index_topk, floor((t+1)/m)) / HCA: floor((t+1)/m))
//              indexer (CSA)  q(ih id) + H ih + 2 x H x 2id + ih id x floor((t+1)/m)
//              MoE            H E (router) + (k + shared) x 3 x H I
//   once       hc_head mixes n x nH, head H V
// The indexer gets no gradient (spec: no gradient flows through its top-k), so a training step
// counts 3 x (everything but the indexer) + the indexer's forward.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"

namespace v4rl::model {

struct ForwardFlops {
  double projections = 0;  // every matmul with a weight, the indexer's excluded
  double attention = 0;    // the attention core's QKᵀ and PV
  double indexer = 0;      // the lightning indexer: its projections, compressor and scores
  double forward() const { return projections + attention + indexer; }
  // Forward + backward of a training step (the indexer forward only).
  double training() const { return 3 * (projections + attention) + indexer; }
};

// Per token of a seq_len-token sequence (seq_len >= 1).
ForwardFlops ForwardFlopsPerToken(const ModelConfig& config, int64_t seq_len);

// The formula above in one line, for benchmark output next to the numbers.
std::string ForwardFlopsFormula();

}  // namespace v4rl::model
