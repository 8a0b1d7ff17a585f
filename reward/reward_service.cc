#include "reward/reward_service.h"

#include "absl/strings/str_format.h"
#include "protos/server_service.h"
#include "reward/verifier.h"

namespace v4rl::reward {
namespace {

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

}  // namespace

grpc::Status RewardServiceImpl::Score(grpc::ServerContext* context, const ScoreRequest* request,
                                  ScoreResponse* response) {
  if (grpc::Status auth = protos::CheckToken(*context, token_); !auth.ok()) return auth;
  if (request->items_size() == 0) return Invalid("items: empty batch");
  if (request->items_size() > kMaxItemsPerRequest) {
    return Invalid(absl::StrFormat("items: %d items exceed the limit of %d", request->items_size(),
                                   kMaxItemsPerRequest));
  }
  // Validate the whole batch before scoring any of it.
  std::vector<VerifierSpec> specs(request->items_size());
  std::vector<actor::ThinkingMode> modes(request->items_size());
  for (int i = 0; i < request->items_size(); ++i) {
    const ScoreItem& item = request->items(i);
    switch (item.mode()) {
      case REASONING_MODE_NON_THINK: modes[i] = actor::ThinkingMode::kChat; break;
      case REASONING_MODE_THINK_HIGH:
      case REASONING_MODE_THINK_MAX: modes[i] = actor::ThinkingMode::kThinking; break;
      default:
        return Invalid(absl::StrFormat(
            "items[%d].mode: must be NON_THINK, THINK_HIGH or THINK_MAX, got %d", i, item.mode()));
    }
    if (item.completion().size() > kMaxCompletionBytes) {
      return Invalid(absl::StrFormat("items[%d].completion: %d bytes exceed the limit of %d", i,
                                     item.completion().size(), kMaxCompletionBytes));
    }
    const v4rl::VerifierSpec& v = item.verifier();
    VerifierSpec& spec = specs[i];
    switch (v.kind()) {
      case v4rl::VerifierSpec::ANSWER_KIND_EXACT: spec.kind = AnswerKind::kExact; break;
      case v4rl::VerifierSpec::ANSWER_KIND_INTEGER: spec.kind = AnswerKind::kInteger; break;
      case v4rl::VerifierSpec::ANSWER_KIND_VERBATIM: spec.kind = AnswerKind::kVerbatim; break;
      default:
        return Invalid(absl::StrFormat("items[%d].verifier.kind: unknown kind %d", i, v.kind()));
    }
    spec.expected = v.expected();
    if (v.has_correct_reward()) spec.correct_reward = v.correct_reward();
    if (v.has_incorrect_reward()) spec.incorrect_reward = v.incorrect_reward();
    if (v.has_format_error_reward()) spec.format_error_reward = v.format_error_reward();
    if (absl::Status status = spec.Validate(); !status.ok()) {
      return Invalid(absl::StrFormat("items[%d]: %s", i, status.message()));
    }
  }
  for (int i = 0; i < request->items_size(); ++i) {
    const reward::Verdict verdict = Verify(specs[i], request->items(i).completion(), modes[i]);
    v4rl::Verdict* out = response->add_verdicts();
    out->set_reward(verdict.reward);
    out->set_format_ok(verdict.format_ok);
    out->set_correct(verdict.correct);
    out->set_answer(verdict.answer);
    out->set_explanation(verdict.explanation);
  }
  return grpc::Status::OK;
}

}  // namespace v4rl::reward
