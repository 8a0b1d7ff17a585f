#include "learner/trainable_parameters.h"

#include <cstring>
#include <string>
#include <utility>

#include "core/logging.h"
#include "model/backward.h"
#include "model/params.h"

namespace v4rl::learner {

std::vector<TrainableParameter> TrainableParameters(model::Model& model,
                                                    model::ModelWeights& grads) {
  std::vector<std::pair<std::string, core::Tensor*>> values, gradients;
  model::VisitParams(model.config, &model.weights, /*include_mtp=*/false,
                     [&](const model::ParamSpec& spec, core::Tensor* slot) {
                       if (model::IsTrainable(spec)) values.emplace_back(spec.name, slot);
                     });
  model::VisitParams(model.config, &grads, /*include_mtp=*/false,
                     [&](const model::ParamSpec& spec, core::Tensor* slot) {
                       if (model::IsTrainable(spec)) gradients.emplace_back(spec.name, slot);
                     });
  V4RL_CHECK_EQ(values.size(), gradients.size());
  std::vector<TrainableParameter> parameters;
  for (size_t i = 0; i < values.size(); ++i) {
    parameters.push_back({values[i].first, values[i].second->view(), gradients[i].second->view()});
  }
  return parameters;
}

void ZeroGradients(const std::vector<TrainableParameter>& parameters) {
  for (const TrainableParameter& p : parameters) std::memset(p.grad.data, 0, p.grad.nbytes());
}

}  // namespace v4rl::learner
