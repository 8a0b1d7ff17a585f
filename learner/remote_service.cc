#include "learner/remote_service.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <utility>

#include "absl/strings/str_format.h"
#include "core/logging.h"
#include "core/status.h"
#include "learner/synthetic_tasks.h"
#include "model/save.h"
#include "protos/server_service.h"
#include "rollout/rollout_service.h"

namespace v4rl::learner {
namespace {

constexpr int kKeepPublished = 3;  // published model directories kept (the newest ones)

std::string PublishedDir(const std::string& root, int64_t version) {
  return absl::StrFormat("%s/version-%08d", root, version);
}

std::string DescribeStatus(const grpc::Status& status) {
  return absl::StrFormat("code %d: %s", static_cast<int>(status.error_code()),
                         status.error_message());
}

absl::Status ToAbsl(const std::string& who, const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrFormat("%s: %s", who, status.error_message()));
}

void SetDeadline(grpc::ClientContext& context, double seconds) {
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
}

std::vector<int32_t> UnpackRouting(const GenerateResult& result) {
  const int bytes_per_id = result.routing().num_experts() <= 256 ? 1 : 2;
  const std::string& packed = result.routed_experts();
  std::vector<int32_t> ids(packed.size() / bytes_per_id);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<uint8_t>(packed[i * bytes_per_id]);
    if (bytes_per_id == 2) ids[i] |= static_cast<int32_t>(static_cast<uint8_t>(packed[i * 2 + 1])) << 8;
  }
  return ids;
}

}  // namespace

bool IsTransportFailure(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::ABORTED:
      return true;
    default:
      return false;
  }
}

RemoteRollout::RemoteRollout(WorkerSupervisor* supervisor, std::string publish_root,
                             RemoteOptions options)
    : supervisor_(supervisor), publish_root_(std::move(publish_root)), options_(options) {}

void RemoteRollout::Connect() {
  stub_ = v4rl::RolloutService::NewStub(
      grpc::CreateChannel(supervisor_->address(), grpc::InsecureChannelCredentials()));
}

grpc::Status RemoteRollout::UpdateWeights(const std::string& dir, const model::Model* model,
                                          int64_t version) {
  grpc::ClientContext context;
  protos::AttachToken(context, options_.token);
  SetDeadline(context, options_.call_timeout_s);
  if (options_.weight_transfer == WeightTransfer::kStream) {
    absl::StatusOr<model::Model> loaded;
    if (model == nullptr) {
      loaded = model::Model::Load(dir);
      if (!loaded.ok()) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            absl::StrFormat("reading back the published weights %s: %s", dir,
                                            loaded.status().message()));
      }
      model = &*loaded;
    }
    UpdateWeightsResponse response;
    return rollout::SendWeightStream(stub_.get(), &context, model->config, model->weights, version,
                                     options_.stream_chunk_bytes, &response);
  }
  UpdateWeightsRequest request;
  request.set_checkpoint_dir(dir);
  request.set_version(version);
  UpdateWeightsResponse response;
  return stub_->UpdateWeights(&context, request, &response);
}

absl::Status RemoteRollout::Recover(const std::string& what, const grpc::Status& failure,
                                    const model::Model* latest) {
  if (!failure.ok()) {
    V4RL_LOG(WARNING) << absl::StrFormat(
        "%s failed during %s (%s); bringing a worker back (restart or wait) with weights "
        "version %d from %s, then retrying",
        supervisor_->Describe(), what, DescribeStatus(failure), published_version_,
        published_dir_);
    ++recoveries_;
  }
  V4RL_ASSIGN_OR_RETURN(const bool serves_latest,
                        supervisor_->Recover(published_dir_, published_version_));
  Connect();
  if (!serves_latest) {
    if (!failure.ok()) {
      V4RL_LOG(WARNING) << absl::StrFormat(
          "re-sending weights version %d to %s by %s", published_version_, supervisor_->Describe(),
          options_.weight_transfer == WeightTransfer::kStream ? "StreamWeights"
                                                              : "UpdateWeights (path)");
    }
    const grpc::Status updated = UpdateWeights(published_dir_, latest, published_version_);
    // FAILED_PRECONDITION: the worker came back already serving this version (or a newer one);
    // each result's weight_version tells the job which, and the lag bound judges it.
    if (!updated.ok() && updated.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
      return ToAbsl(absl::StrFormat("%s: UpdateWeights(version %d) after recovery",
                                    supervisor_->Describe(), published_version_),
                    updated);
    }
  }
  if (!failure.ok()) {
    V4RL_LOG(WARNING) << absl::StrFormat("%s is back with weights version %d; retrying %s",
                                         supervisor_->Describe(), published_version_, what);
  }
  return absl::OkStatus();
}

absl::Status RemoteRollout::PublishWeights(const model::Model& model, int64_t version) {
  if (published_version_ >= 0 && version <= published_version_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: version %d must exceed the published version %d", Describe(), version,
        published_version_));
  }
  const std::string dir = PublishedDir(publish_root_, version);
  std::error_code error;
  std::filesystem::remove_all(dir, error);  // a leftover of an interrupted run
  V4RL_RETURN_IF_ERROR(model::SaveModel(dir, model.config, model.weights));
  published_dir_ = dir;
  published_version_ = version;
  if (stub_ == nullptr) {
    V4RL_RETURN_IF_ERROR(Recover("start-up", grpc::Status::OK, &model));
  } else {
    grpc::Status status = UpdateWeights(dir, &model, version);
    for (int attempt = 1; !status.ok() && IsTransportFailure(status) &&
                          attempt < options_.max_attempts;
         ++attempt) {
      // Recover re-publishes published_dir_, which is already this version.
      V4RL_RETURN_IF_ERROR(
          Recover(absl::StrFormat("publishing weights version %d", version), status));
      status = grpc::Status::OK;
    }
    if (!status.ok()) {
      return ToAbsl(
          absl::StrFormat("%s: %s(%s, version %d)", Describe(),
                          options_.weight_transfer == WeightTransfer::kStream ? "StreamWeights"
                                                                              : "UpdateWeights",
                          dir, version),
          status);
    }
  }
  // Keep the newest few directories: a restarted worker loads the latest.
  if (version >= kKeepPublished) {
    std::filesystem::remove_all(PublishedDir(publish_root_, version - kKeepPublished), error);
  }
  return absl::OkStatus();
}

grpc::Status RemoteRollout::GenerateOnce(const GenerateRequest& request,
                                         std::vector<GenerateResult>* results) {
  results->clear();
  grpc::ClientContext context;
  protos::AttachToken(context, options_.token);
  SetDeadline(context, options_.call_timeout_s);
  std::unique_ptr<grpc::ClientReader<GenerateResult>> reader = stub_->Generate(&context, request);
  GenerateResult result;
  while (reader->Read(&result)) results->push_back(std::move(result));
  return reader->Finish();
}

absl::StatusOr<std::vector<RolloutResult>> RemoteRollout::Generate(
    absl::Span<const rollout::GenerationRequest> requests,
    const rollout::GenerateOptions& options) {
  if (stub_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: no weights published yet", Describe()));
  }
  std::vector<RolloutResult> out;
  out.reserve(requests.size());
  for (size_t begin = 0; begin < requests.size(); begin += rollout::kMaxPromptsPerRequest) {
    const size_t end = std::min(requests.size(), begin + rollout::kMaxPromptsPerRequest);
    GenerateRequest request;
    request.set_mode(REASONING_MODE_NON_THINK);
    SamplingParams* sampling = request.mutable_sampling();
    if (!options.sampling.greedy) {
      sampling->set_temperature(options.sampling.temperature);
      sampling->set_top_p(options.sampling.top_p);
      sampling->set_top_k(options.sampling.top_k);
    }
    sampling->set_max_new_tokens(static_cast<int32_t>(options.max_new_tokens));
    request.mutable_stop_tokens()->Assign(options.stop_tokens.begin(), options.stop_tokens.end());
    for (size_t b = begin; b < end; ++b) {
      Prompt* prompt = request.add_prompts();
      prompt->mutable_token_ids()->Assign(requests[b].prompt.begin(), requests[b].prompt.end());
      prompt->set_seed(requests[b].seed);
    }
    std::vector<GenerateResult> results;
    grpc::Status status = GenerateOnce(request, &results);
    for (int attempt = 1; !status.ok() && IsTransportFailure(status) &&
                          attempt < options_.max_attempts;
         ++attempt) {
      V4RL_RETURN_IF_ERROR(Recover(
          absl::StrFormat("the rollout of %d prompts on weights version %d", end - begin,
                          published_version_),
          status));
      status = GenerateOnce(request, &results);
    }
    if (!status.ok()) return ToAbsl(absl::StrFormat("%s: Generate", Describe()), status);
    if (results.size() != end - begin) {
      return absl::DataLossError(absl::StrFormat("%s: Generate streamed %d results for %d prompts",
                                                 Describe(), results.size(), end - begin));
    }
    for (size_t i = 0; i < results.size(); ++i) {
      GenerateResult& result = results[i];
      if (result.prompt_index() != static_cast<int>(i) ||
          result.max_new_tokens() != options.max_new_tokens) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "%s: result %d has prompt_index %d and max_new_tokens %d; expected %d and %d (is the "
            "worker's NON_THINK budget below the job's max_new_tokens?)",
            Describe(), i, result.prompt_index(), result.max_new_tokens(), i,
            options.max_new_tokens));
      }
      RolloutResult r;
      r.generation.tokens.assign(result.tokens().begin(), result.tokens().end());
      r.generation.sampling_logprobs.assign(result.sampling_logprobs().begin(),
                                            result.sampling_logprobs().end());
      r.generation.model_logprobs.assign(result.model_logprobs().begin(),
                                         result.model_logprobs().end());
      r.generation.kept_counts.assign(result.kept_counts().begin(), result.kept_counts().end());
      r.generation.routed_experts = UnpackRouting(result);
      r.generation.finish_reason = result.finish_reason() == FINISH_REASON_STOP
                                       ? rollout::FinishReason::kStop
                                       : rollout::FinishReason::kLength;
      r.weight_version = result.weight_version();
      out.push_back(std::move(r));
    }
  }
  return out;
}

RemoteReward::RemoteReward(WorkerSupervisor* supervisor, RemoteOptions options)
    : supervisor_(supervisor), options_(options) {}

absl::StatusOr<std::vector<double>> RemoteReward::Score(absl::Span<const RewardItem> items) {
  ScoreRequest request;
  for (const RewardItem& item : items) {
    ScoreItem* out = request.add_items();
    out->set_completion(DecodeChars(item.completion));
    out->set_mode(REASONING_MODE_NON_THINK);
    VerifierSpec* verifier = out->mutable_verifier();
    verifier->set_kind(VerifierSpec::ANSWER_KIND_VERBATIM);
    verifier->set_expected(DecodeChars(item.expected));
    verifier->set_correct_reward(1.0);
    verifier->set_incorrect_reward(0.0);
    verifier->set_format_error_reward(0.0);
  }
  grpc::Status status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "not started");
  ScoreResponse response;
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    if (stub_ == nullptr || attempt > 0) {
      if (stub_ != nullptr) {
        V4RL_LOG(WARNING) << absl::StrFormat(
            "%s failed during Score of %d items (%s); bringing it back and retrying",
            supervisor_->Describe(), items.size(), DescribeStatus(status));
        ++recoveries_;
      }
      V4RL_RETURN_IF_ERROR(supervisor_->Recover("", -1).status());
      stub_ = v4rl::RewardService::NewStub(
          grpc::CreateChannel(supervisor_->address(), grpc::InsecureChannelCredentials()));
    }
    grpc::ClientContext context;
    protos::AttachToken(context, options_.token);
    SetDeadline(context, options_.call_timeout_s);
    response.Clear();
    status = stub_->Score(&context, request, &response);
    if (status.ok() || !IsTransportFailure(status)) break;
  }
  if (!status.ok()) return ToAbsl(absl::StrFormat("%s: Score", Describe()), status);
  if (response.verdicts_size() != static_cast<int>(items.size())) {
    return absl::DataLossError(absl::StrFormat("%s: %d verdicts for %d items", Describe(),
                                               response.verdicts_size(), items.size()));
  }
  std::vector<double> rewards(items.size());
  for (size_t i = 0; i < items.size(); ++i) rewards[i] = response.verdicts(i).reward();
  return rewards;
}

}  // namespace v4rl::learner
