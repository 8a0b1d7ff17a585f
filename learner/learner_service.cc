#include "learner/learner_service.h"

#include <chrono>
#include <cmath>
#include <vector>

#include "absl/strings/str_format.h"
#include "protos/server_service.h"

namespace v4rl::learner {
namespace {

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

grpc::Status ToGrpc(const absl::Status& status, const std::string& prefix) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      prefix + std::string(status.message()));
}

// A submitted trajectory as the store's plain structs, validated.
struct Submission {
  store::TrajectoryHeader header;
  std::vector<int32_t> prompt;
  store::CompletionTokens completion;
  store::TrajectoryStatus status = store::TrajectoryStatus::kComplete;
  std::vector<store::Reward> rewards;
};

// Checks `t` and converts it; the message names the field under `name` ("trajectories[3]").
grpc::Status ToSubmission(const Trajectory& t, const std::string& name, Submission* out) {
  const TrajectoryHeader& h = t.meta().header();
  store::TrajectoryHeader& header = out->header;
  header.job_id = h.job_id();
  header.group_id = h.group_id();
  header.teacher_id = h.teacher_id();
  header.policy_version = h.policy_version();
  switch (h.mode()) {
    case REASONING_MODE_NON_THINK: header.mode = store::ReasoningMode::kNonThink; break;
    case REASONING_MODE_THINK_HIGH: header.mode = store::ReasoningMode::kThinkHigh; break;
    case REASONING_MODE_THINK_MAX: header.mode = store::ReasoningMode::kThinkMax; break;
    default:
      return Invalid(absl::StrFormat(
          "%s.meta.header.mode: must be NON_THINK, THINK_HIGH or THINK_MAX, got %d", name,
          h.mode()));
  }
  header.sampling = {.temperature = h.sampling().temperature(),
                     .top_p = h.sampling().top_p(),
                     .top_k = h.sampling().top_k(),
                     .max_new_tokens = h.sampling().max_new_tokens(),
                     .seed = h.sampling().seed()};
  header.routing = {.num_moe_layers = h.routing().num_moe_layers(),
                    .num_topk = h.routing().num_topk(),
                    .num_experts = h.routing().num_experts()};
  out->prompt.assign(t.prompt_token_ids().begin(), t.prompt_token_ids().end());
  if (absl::Status valid = store::ValidateBegin(header, out->prompt); !valid.ok()) {
    return ToGrpc(valid, name + ": ");
  }
  switch (t.meta().status()) {
    case TRAJECTORY_STATUS_COMPLETE: out->status = store::TrajectoryStatus::kComplete; break;
    case TRAJECTORY_STATUS_TRUNCATED: out->status = store::TrajectoryStatus::kTruncated; break;
    default:
      return Invalid(absl::StrFormat(
          "%s.meta.status: %d; only finished trajectories (COMPLETE or TRUNCATED) are accepted",
          name, t.meta().status()));
  }
  const TokenChunk& c = t.completion();
  store::CompletionTokens& completion = out->completion;
  completion.token_ids.assign(c.token_ids().begin(), c.token_ids().end());
  completion.logprobs.assign(c.logprobs().begin(), c.logprobs().end());
  completion.weight_versions.assign(c.weight_versions().begin(), c.weight_versions().end());
  completion.kept_set_sizes.assign(c.kept_set_sizes().begin(), c.kept_set_sizes().end());
  const std::string& routing = t.routing().expert_ids();
  if (header.routing.enabled()) {
    const int bytes = header.routing.bytes_per_id();
    if (routing.size() % bytes != 0) {
      return Invalid(absl::StrFormat("%s.routing.expert_ids: %d bytes, not a multiple of %d",
                                     name, routing.size(), bytes));
    }
    completion.routed_experts.resize(routing.size() / bytes);
    for (size_t i = 0; i < completion.routed_experts.size(); ++i) {
      uint16_t id = static_cast<uint8_t>(routing[i * bytes]);
      if (bytes == 2) id |= static_cast<uint16_t>(static_cast<uint8_t>(routing[i * 2 + 1]) << 8);
      completion.routed_experts[i] = id;
    }
  } else if (!routing.empty()) {
    return Invalid(absl::StrFormat(
        "%s.routing.expert_ids: %d bytes, but meta.header.routing records no routing", name,
        routing.size()));
  }
  store::TrajectoryMeta fresh;  // what Begin would create: the append is checked against it
  fresh.header = header;
  fresh.max_weight_version = header.policy_version;
  if (absl::Status valid = store::ValidateAppend(fresh, 0, completion); !valid.ok()) {
    return ToGrpc(valid, name + ".completion: ");
  }
  if (t.meta().rewards_size() == 0) {
    return Invalid(absl::StrFormat("%s.meta.rewards: none; submit rewarded trajectories", name));
  }
  store::TrajectoryMeta finished = fresh;
  finished.status = out->status;
  for (int r = 0; r < t.meta().rewards_size(); ++r) {
    const Reward& in = t.meta().rewards(r);
    store::Reward reward;
    switch (in.source()) {
      case REWARD_SOURCE_VERIFIER: reward.source = store::RewardSource::kVerifier; break;
      case REWARD_SOURCE_GRM: reward.source = store::RewardSource::kGrm; break;
      default:
        return Invalid(absl::StrFormat("%s.meta.rewards[%d].source: must be VERIFIER or GRM, got %d",
                                       name, r, in.source()));
    }
    reward.source_id = in.source_id();
    reward.value = in.value();
    if (absl::Status valid = store::ValidateReward(finished, reward); !valid.ok()) {
      return ToGrpc(valid, absl::StrFormat("%s.meta.rewards[%d]: ", name, r));
    }
    out->rewards.push_back(std::move(reward));
  }
  return grpc::Status::OK;
}

}  // namespace

grpc::Status LearnerServiceImpl::SubmitTrajectories(grpc::ServerContext* context,
                                                    const SubmitTrajectoriesRequest* request,
                                                    SubmitTrajectoriesResponse* response) {
  if (grpc::Status auth = protos::CheckToken(*context, token_); !auth.ok()) return auth;
  if (request->trajectory_ids_size() == 0 && request->trajectories_size() == 0) {
    return Invalid("trajectory_ids, trajectories: empty request");
  }
  if (request->trajectory_ids_size() > kMaxSubmittedIds) {
    return Invalid(absl::StrFormat("trajectory_ids: %d ids exceed the limit of %d",
                                   request->trajectory_ids_size(), kMaxSubmittedIds));
  }
  if (request->trajectories_size() > kMaxSubmittedTrajectories) {
    return Invalid(absl::StrFormat("trajectories: %d trajectories exceed the limit of %d",
                                   request->trajectories_size(), kMaxSubmittedTrajectories));
  }
  std::vector<store::TrajectoryId> ids;
  for (int i = 0; i < request->trajectory_ids_size(); ++i) {
    const store::TrajectoryId id = request->trajectory_ids(i);
    absl::StatusOr<store::TrajectoryMeta> meta = store_->GetMeta(id);
    if (!meta.ok()) {
      return ToGrpc(meta.status(), absl::StrFormat("trajectory_ids[%d]: ", i));
    }
    if (meta->status != store::TrajectoryStatus::kComplete &&
        meta->status != store::TrajectoryStatus::kTruncated) {
      return Invalid(absl::StrFormat(
          "trajectory_ids[%d]: trajectory %d is %s; only finished trajectories are accepted", i,
          id, std::string(store::TrajectoryStatusName(meta->status))));
    }
    if (meta->rewards.empty()) {
      return Invalid(absl::StrFormat("trajectory_ids[%d]: trajectory %d has no reward", i, id));
    }
    ids.push_back(id);
  }
  std::vector<Submission> submissions(request->trajectories_size());
  for (int i = 0; i < request->trajectories_size(); ++i) {
    if (grpc::Status valid = ToSubmission(request->trajectories(i),
                                          absl::StrFormat("trajectories[%d]", i), &submissions[i]);
        !valid.ok()) {
      return valid;
    }
  }
  for (size_t i = 0; i < submissions.size(); ++i) {
    const Submission& s = submissions[i];
    const std::string where = absl::StrFormat("trajectories[%d]: store: ", i);
    absl::StatusOr<store::TrajectoryId> id = store_->Begin(s.header, s.prompt);
    if (!id.ok()) return ToGrpc(id.status(), where);
    absl::Status written = store_->AppendTokens(*id, 0, s.completion);
    if (written.ok()) written = store_->Finish(*id, s.status);
    for (size_t r = 0; written.ok() && r < s.rewards.size(); ++r) {
      written = store_->AddReward(*id, s.rewards[r]);
    }
    if (!written.ok()) return ToGrpc(written, where);
    ids.push_back(*id);
  }
  response->mutable_trajectory_ids()->Assign(ids.begin(), ids.end());
  response->set_queued(inbox_->Push(ids));
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::WaitForWeightVersion(grpc::ServerContext* context,
                                                      const WaitForWeightVersionRequest* request,
                                                      WaitForWeightVersionResponse* response) {
  if (grpc::Status auth = protos::CheckToken(*context, token_); !auth.ok()) return auth;
  if (request->version() < 0) {
    return Invalid(absl::StrFormat("version: %d, expected >= 0", request->version()));
  }
  if (request->timeout_ms() < 0) {
    return Invalid(absl::StrFormat("timeout_ms: %d, expected >= 0 (0 = the call's deadline)",
                                   request->timeout_ms()));
  }
  const auto now = std::chrono::steady_clock::now();
  auto deadline = now + std::chrono::milliseconds(
                            request->timeout_ms() > 0
                                ? std::min<int64_t>(request->timeout_ms(), kMaxWaitMs)
                                : kMaxWaitMs);
  // The client's own deadline, converted from the system clock.
  const auto client_left = context->deadline() - std::chrono::system_clock::now();
  if (client_left < deadline - now) {
    deadline = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(client_left);
  }
  absl::StatusOr<int64_t> version =
      board_->WaitFor(request->version(), deadline, [context] { return context->IsCancelled(); });
  if (!version.ok()) return ToGrpc(version.status(), "");
  response->set_version(*version);
  return grpc::Status::OK;
}

}  // namespace v4rl::learner
