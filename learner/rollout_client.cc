#include "learner/rollout_client.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "core/status.h"

namespace v4rl::learner {

absl::Status InProcessRollout::PublishWeights(const model::Model& model, int64_t version) {
  if (model_ != nullptr && version <= version_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "in-process rollout: version %d must exceed the published version %d", version, version_));
  }
  model_ = &model;
  version_ = version;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RolloutResult>> InProcessRollout::Generate(
    absl::Span<const rollout::GenerationRequest> requests,
    const rollout::GenerateOptions& options) {
  if (model_ == nullptr) {
    return absl::FailedPreconditionError("in-process rollout: no weights published yet");
  }
  V4RL_ASSIGN_OR_RETURN(std::vector<rollout::GenerationResult> generated,
                        rollout::Generate(*model_, requests, options));
  std::vector<RolloutResult> results(generated.size());
  for (size_t b = 0; b < generated.size(); ++b) {
    results[b] = {.generation = std::move(generated[b]), .weight_version = version_};
  }
  return results;
}

absl::StatusOr<std::vector<double>> ExactMatchReward::Score(absl::Span<const RewardItem> items) {
  std::vector<double> rewards(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    rewards[i] = items[i].completion == items[i].expected ? 1.0 : 0.0;
  }
  return rewards;
}

}  // namespace v4rl::learner
