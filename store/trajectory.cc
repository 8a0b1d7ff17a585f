#include "store/trajectory.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/status.h"

namespace v4rl::store {
namespace {

// Ids end up in RocksDB index keys terminated by NUL (see Note [Key layout]).
absl::Status ValidateId(const std::string& value, const char* field, bool required) {
  if (required && value.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s is empty; expected 1..%d bytes", field, kMaxIdBytes));
  }
  if (static_cast<int64_t>(value.size()) > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has %d bytes; expected at most %d", field, value.size(), kMaxIdBytes));
  }
  if (value.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrFormat("%s contains a NUL byte", field));
  }
  return absl::OkStatus();
}

absl::Status ValidateRouting(const RoutingShape& routing) {
  if (routing.num_moe_layers == 0) {
    if (routing.num_topk != 0 || routing.num_experts != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "routing.num_moe_layers is 0 (routing off) but num_topk is %d and num_experts is %d; "
          "expected both 0",
          routing.num_topk, routing.num_experts));
    }
    return absl::OkStatus();
  }
  if (routing.num_moe_layers < 0 || routing.num_moe_layers > kMaxMoeLayers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "routing.num_moe_layers is %d; expected 0..%d", routing.num_moe_layers, kMaxMoeLayers));
  }
  if (routing.num_topk < 1 || routing.num_topk > kMaxTopk) {
    return absl::InvalidArgumentError(
        absl::StrFormat("routing.num_topk is %d; expected 1..%d", routing.num_topk, kMaxTopk));
  }
  if (routing.num_experts < routing.num_topk || routing.num_experts > kMaxExperts) {
    return absl::InvalidArgumentError(
        absl::StrFormat("routing.num_experts is %d; expected num_topk (%d)..%d",
                        routing.num_experts, routing.num_topk, kMaxExperts));
  }
  return absl::OkStatus();
}

absl::Status ValidateSampling(const SamplingParams& sampling) {
  if (!std::isfinite(sampling.temperature) || sampling.temperature < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sampling.temperature is %g; expected a finite value >= 0", sampling.temperature));
  }
  if (!(sampling.top_p > 0 && sampling.top_p <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sampling.top_p is %g; expected (0, 1]", sampling.top_p));
  }
  if (sampling.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sampling.top_k is %d; expected >= 0 (0 = off)", sampling.top_k));
  }
  if (sampling.max_new_tokens < 0 || sampling.max_new_tokens > kMaxCompletionTokens) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sampling.max_new_tokens is %d; expected 0..%d (0 = unlimited)",
                        sampling.max_new_tokens, kMaxCompletionTokens));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view ReasoningModeName(ReasoningMode mode) {
  switch (mode) {
    case ReasoningMode::kNonThink:
      return "non_think";
    case ReasoningMode::kThinkHigh:
      return "think_high";
    case ReasoningMode::kThinkMax:
      return "think_max";
  }
  return "invalid";
}

std::string_view TrajectoryStatusName(TrajectoryStatus status) {
  switch (status) {
    case TrajectoryStatus::kInProgress:
      return "in_progress";
    case TrajectoryStatus::kComplete:
      return "complete";
    case TrajectoryStatus::kTruncated:
      return "truncated";
    case TrajectoryStatus::kAborted:
      return "aborted";
  }
  return "invalid";
}

std::string_view RewardSourceName(RewardSource source) {
  switch (source) {
    case RewardSource::kVerifier:
      return "verifier";
    case RewardSource::kGrm:
      return "grm";
  }
  return "invalid";
}

absl::Status ValidateHeader(const TrajectoryHeader& header) {
  V4RL_RETURN_IF_ERROR(ValidateId(header.job_id, "job_id", /*required=*/true));
  V4RL_RETURN_IF_ERROR(ValidateId(header.teacher_id, "teacher_id", /*required=*/false));
  if (header.policy_version < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("policy_version is %d; expected >= 0", header.policy_version));
  }
  if (ReasoningModeName(header.mode) == "invalid") {
    return absl::InvalidArgumentError(
        absl::StrFormat("mode is %d; expected non_think (0), think_high (1) or think_max (2)",
                        static_cast<int>(header.mode)));
  }
  V4RL_RETURN_IF_ERROR(ValidateSampling(header.sampling));
  return ValidateRouting(header.routing);
}

absl::Status ValidateBegin(const TrajectoryHeader& header, absl::Span<const int32_t> prompt) {
  V4RL_RETURN_IF_ERROR(ValidateHeader(header));
  if (prompt.empty()) {
    return absl::InvalidArgumentError("prompt_token_ids is empty; expected at least 1 token");
  }
  if (static_cast<int64_t>(prompt.size()) > kMaxPromptTokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prompt_token_ids has %d tokens; expected at most %d", prompt.size(), kMaxPromptTokens));
  }
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("prompt_token_ids[%d] is %d; expected >= 0", i, prompt[i]));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateAppend(const TrajectoryMeta& meta, int64_t first_token,
                            const CompletionTokens& chunk) {
  if (meta.status != TrajectoryStatus::kInProgress) {
    return absl::FailedPreconditionError(
        absl::StrFormat("trajectory %d is %s; appends need in_progress", meta.id,
                        TrajectoryStatusName(meta.status)));
  }
  if (first_token != meta.num_completion_tokens) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "append to trajectory %d starts at token %d but %d completion tokens are stored; read "
        "the trajectory and resume at its end",
        meta.id, first_token, meta.num_completion_tokens));
  }
  const int64_t n = chunk.num_tokens();
  if (n == 0) {
    return absl::InvalidArgumentError("chunk.token_ids is empty; expected at least 1 token");
  }
  if (meta.num_completion_tokens + n > kMaxCompletionTokens) {
    return absl::InvalidArgumentError(
        absl::StrFormat("trajectory %d would reach %d completion tokens; expected at most %d",
                        meta.id, meta.num_completion_tokens + n, kMaxCompletionTokens));
  }
  const std::tuple<const char*, size_t> lengths[] = {
      {"logprobs", chunk.logprobs.size()},
      {"weight_versions", chunk.weight_versions.size()},
      {"kept_set_sizes", chunk.kept_set_sizes.size()},
  };
  for (const auto& [field, size] : lengths) {
    if (static_cast<int64_t>(size) != n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chunk.%s has %d entries; expected %d (one per token_ids entry)", field, size, n));
    }
  }
  const RoutingShape& routing = meta.header.routing;
  const int64_t expected_ids = routing.ids_per_token() * n;
  if (static_cast<int64_t>(chunk.routed_experts.size()) != expected_ids) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk.routed_experts has %d ids; expected %d (num_moe_layers %d x %d tokens x "
        "num_topk %d)",
        chunk.routed_experts.size(), expected_ids, routing.num_moe_layers, n, routing.num_topk));
  }
  int64_t previous_version = meta.max_weight_version;
  for (int64_t i = 0; i < n; ++i) {
    if (chunk.token_ids[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("chunk.token_ids[%d] is %d; expected >= 0", i, chunk.token_ids[i]));
    }
    if (!std::isfinite(chunk.logprobs[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chunk.logprobs[%d] is %g; expected a finite value", i, chunk.logprobs[i]));
    }
    if (chunk.kept_set_sizes[i] < 1) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chunk.kept_set_sizes[%d] is %d; expected >= 1", i, chunk.kept_set_sizes[i]));
    }
    if (chunk.weight_versions[i] < previous_version) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chunk.weight_versions[%d] is %d, older than %d before it; weight versions never "
          "decrease within a trajectory",
          i, chunk.weight_versions[i], previous_version));
    }
    previous_version = chunk.weight_versions[i];
  }
  for (size_t i = 0; i < chunk.routed_experts.size(); ++i) {
    if (chunk.routed_experts[i] >= routing.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrFormat("chunk.routed_experts[%d] is %d; expected < num_experts (%d)", i,
                          chunk.routed_experts[i], routing.num_experts));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateFinish(const TrajectoryMeta& meta, TrajectoryStatus status) {
  if (!IsTerminal(status) || TrajectoryStatusName(status) == "invalid") {
    return absl::InvalidArgumentError(
        absl::StrFormat("Finish status is %d (%s); expected complete, truncated or aborted",
                        static_cast<int>(status), TrajectoryStatusName(status)));
  }
  if (meta.status != TrajectoryStatus::kInProgress) {
    return absl::FailedPreconditionError(
        absl::StrFormat("trajectory %d is already %s", meta.id, TrajectoryStatusName(meta.status)));
  }
  return absl::OkStatus();
}

absl::Status ValidateReward(const TrajectoryMeta& meta, const Reward& reward) {
  if (RewardSourceName(reward.source) == "invalid") {
    return absl::InvalidArgumentError(absl::StrFormat(
        "reward.source is %d; expected verifier (0) or grm (1)", static_cast<int>(reward.source)));
  }
  V4RL_RETURN_IF_ERROR(ValidateId(reward.source_id, "reward.source_id", /*required=*/true));
  if (!std::isfinite(reward.value)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("reward.value is %g; expected a finite value", reward.value));
  }
  if (meta.status == TrajectoryStatus::kInProgress) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "trajectory %d is in_progress; rewards attach to finished trajectories", meta.id));
  }
  return absl::OkStatus();
}

void ApplyAppend(const CompletionTokens& chunk, int64_t now_us, TrajectoryMeta* meta) {
  meta->num_completion_tokens += chunk.num_tokens();
  meta->num_chunks += 1;
  meta->max_weight_version = chunk.weight_versions.back();
  meta->updated_us = now_us;
}

CompletionTokens ConcatenateChunks(absl::Span<const CompletionTokens> chunks,
                                   const RoutingShape& routing, bool with_routing) {
  int64_t total = 0;
  for (const CompletionTokens& chunk : chunks) total += chunk.num_tokens();
  CompletionTokens out;
  out.token_ids.reserve(total);
  out.logprobs.reserve(total);
  out.weight_versions.reserve(total);
  out.kept_set_sizes.reserve(total);
  for (const CompletionTokens& chunk : chunks) {
    out.token_ids.insert(out.token_ids.end(), chunk.token_ids.begin(), chunk.token_ids.end());
    out.logprobs.insert(out.logprobs.end(), chunk.logprobs.begin(), chunk.logprobs.end());
    out.weight_versions.insert(out.weight_versions.end(), chunk.weight_versions.begin(),
                               chunk.weight_versions.end());
    out.kept_set_sizes.insert(out.kept_set_sizes.end(), chunk.kept_set_sizes.begin(),
                              chunk.kept_set_sizes.end());
  }
  if (!with_routing || !routing.enabled()) return out;
  // Each chunk is [layers, n, topk]; layer l of the chunk lands at tokens [offset, offset + n) of
  // layer l of the result.
  const int64_t topk = routing.num_topk;
  out.routed_experts.resize(routing.num_moe_layers * total * topk);
  int64_t offset = 0;
  for (const CompletionTokens& chunk : chunks) {
    const int64_t n = chunk.num_tokens();
    for (int64_t layer = 0; layer < routing.num_moe_layers; ++layer) {
      std::copy_n(chunk.routed_experts.begin() + layer * n * topk, n * topk,
                  out.routed_experts.begin() + (layer * total + offset) * topk);
    }
    offset += n;
  }
  return out;
}

void SortForLearner(std::vector<Trajectory>* batch) {
  std::sort(batch->begin(), batch->end(), [](const Trajectory& a, const Trajectory& b) {
    return std::tie(a.meta.header.teacher_id, a.meta.id) <
           std::tie(b.meta.header.teacher_id, b.meta.id);
  });
}

int64_t NowMicros() { return absl::ToUnixMicros(absl::Now()); }

}  // namespace v4rl::store
