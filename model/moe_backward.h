// Backward of the V4 mixture of experts (model/moe.h): the shared expert, every routed pick
// (clamped SwiGLU, its down projection and its routing weight), the renormalised routing weights
// and the sqrt(softplus) router scores, back to the MoE input and the gate weight.
//
// Selection is not differentiable: the picks (top-k of score + bias, the hash layers' tid2eid
// rows, or replayed ids) are constants here, so the router receives gradient only through the
// scores of the picked experts. Neither the selection bias (gate.bias, e_score_correction_bias)
// nor tid2eid is trained; their gradient slots stay undefined.
// Thread-safety: reentrant; the caller owns every tensor.
#pragma once

#include "core/tensor.h"
#include "model/config.h"
#include "model/moe.h"
#include "model/weights.h"

namespace v4rl::model {

// x: [N, H] f32 (the forward's ffn_norm output); acts: the forward's activations; dout: [N, H]
// f32 gradient of the MoE output. Adds to dx [N, H] and to grads->gate, w1, w2, w3 and the
// shared expert's gradients.
void MoeBackward(const MoeWeights& weights, const ModelConfig& config, const core::TensorView& x,
                 const MoeActivations& acts, const core::TensorView& dout,
                 const core::TensorView& dx, MoeWeights* grads);

}  // namespace v4rl::model
