// A model's trainable parameters paired with their gradient slots, as the optimizer takes them
// (learner/optimizer.h), shared by the SFT and RL trainers.
//
// Ownership: the returned TrainableParameters are views; `model` owns the values and `grads` (from
// model::ZeroGradients) owns the gradients, and both must outlive the views.
// Thread-safety: the functions are reentrant; concurrent calls need distinct parameters.
#pragma once

#include <vector>

#include "learner/optimizer.h"
#include "model/forward.h"
#include "model/weights.h"

namespace v4rl::learner {

// Every parameter model::IsTrainable accepts (main model only, no MTP), in VisitParams order,
// with its f32 value and its slot in `grads`.
std::vector<TrainableParameter> TrainableParameters(model::Model& model,
                                                    model::ModelWeights& grads);

// Sets every gradient view to zero (model::Backward adds to them).
void ZeroGradients(const std::vector<TrainableParameter>& parameters);

}  // namespace v4rl::learner
