#include "store/rocksdb_codec.h"

#include <climits>
#include <cmath>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "protos/trajectory.pb.h"

namespace v4rl::store::codec {
namespace {

// A meta record holds no per-token data; anything larger is not one of ours.
constexpr size_t kMaxMetaBytes = size_t{1} << 20;
constexpr int kMaxRewards = 1024;

absl::Status DataLoss(const std::string& context, const absl::Status& cause) {
  return absl::DataLossError(absl::StrFormat("%s: %s", context, cause.message()));
}

template <typename Message>
absl::Status Parse(std::string_view bytes, const std::string& what, Message* message) {
  if (bytes.size() > static_cast<size_t>(INT_MAX) ||
      !message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrFormat("%s: %d bytes do not parse as %s", what,
                                               bytes.size(), message->GetTypeName()));
  }
  return absl::OkStatus();
}

// Domain enums count from 0; the proto ones reserve 0 for UNSPECIFIED.
template <typename Proto, typename Domain>
Proto ToProto(Domain value) {
  return static_cast<Proto>(static_cast<int>(value) + 1);
}

template <typename Domain>
absl::StatusOr<Domain> FromProto(int value, int num_values, const std::string& what) {
  if (value < 1 || value > num_values) {
    return absl::DataLossError(
        absl::StrFormat("%s is %d; expected 1..%d", what, value, num_values));
  }
  return static_cast<Domain>(value - 1);
}

void PutBigEndian(uint64_t value, int num_bytes, std::string* out) {
  for (int shift = 8 * (num_bytes - 1); shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

uint64_t GetBigEndian(std::string_view bytes) {
  uint64_t value = 0;
  for (char c : bytes) value = (value << 8) | static_cast<uint8_t>(c);
  return value;
}

}  // namespace

std::string EncodeBigEndian64(uint64_t value) {
  std::string out;
  PutBigEndian(value, 8, &out);
  return out;
}

absl::StatusOr<uint64_t> DecodeBigEndian64(std::string_view bytes, std::string_view what) {
  if (bytes.size() != 8) {
    return absl::DataLossError(
        absl::StrFormat("%s has %d bytes; expected 8", std::string(what), bytes.size()));
  }
  return GetBigEndian(bytes);
}

std::string MetaKey(TrajectoryId id) { return EncodeBigEndian64(id); }

std::string ChunkKey(TrajectoryId id, uint32_t seq) {
  std::string key = EncodeBigEndian64(id);
  PutBigEndian(seq, 4, &key);
  return key;
}

absl::StatusOr<TrajectoryId> ParseMetaKey(std::string_view key) {
  return DecodeBigEndian64(key, "meta key");
}

absl::StatusOr<std::pair<TrajectoryId, uint32_t>> ParseChunkKey(std::string_view key) {
  if (key.size() != 12) {
    return absl::DataLossError(
        absl::StrFormat("chunk key has %d bytes; expected 12 (id, sequence)", key.size()));
  }
  return std::make_pair(GetBigEndian(key.substr(0, 8)),
                        static_cast<uint32_t>(GetBigEndian(key.substr(8))));
}

std::string JobIndexPrefix(const std::string& job_id) {
  std::string key = "j";
  key += job_id;
  key.push_back('\0');
  return key;
}

std::string JobIndexKey(const std::string& job_id, TrajectoryId id) {
  std::string key = JobIndexPrefix(job_id);
  PutBigEndian(id, 8, &key);
  return key;
}

std::string GroupIndexPrefix(const std::string& job_id, uint64_t group_id) {
  std::string key = "g";
  key += job_id;
  key.push_back('\0');
  PutBigEndian(group_id, 8, &key);
  return key;
}

std::string GroupIndexKey(const std::string& job_id, uint64_t group_id, TrajectoryId id) {
  std::string key = GroupIndexPrefix(job_id, group_id);
  PutBigEndian(id, 8, &key);
  return key;
}

std::string VersionIndexKey(int64_t policy_version, TrajectoryId id) {
  std::string key = "v";
  PutBigEndian(static_cast<uint64_t>(policy_version), 8, &key);
  PutBigEndian(id, 8, &key);
  return key;
}

absl::StatusOr<TrajectoryId> ParseIndexKeyId(std::string_view key) {
  if (key.size() < 9) {
    return absl::DataLossError(
        absl::StrFormat("index key has %d bytes; expected a prefix and an 8-byte id", key.size()));
  }
  return GetBigEndian(key.substr(key.size() - 8));
}

std::string EncodeMeta(const TrajectoryMeta& meta) {
  v4rl::TrajectoryMeta proto;
  proto.set_id(meta.id);
  const TrajectoryHeader& header = meta.header;
  v4rl::TrajectoryHeader* h = proto.mutable_header();
  h->set_job_id(header.job_id);
  h->set_group_id(header.group_id);
  h->set_teacher_id(header.teacher_id);
  h->set_policy_version(header.policy_version);
  h->set_mode(ToProto<v4rl::ReasoningMode>(header.mode));
  v4rl::SamplingParams* sampling = h->mutable_sampling();
  sampling->set_temperature(header.sampling.temperature);
  sampling->set_top_p(header.sampling.top_p);
  sampling->set_top_k(header.sampling.top_k);
  sampling->set_max_new_tokens(header.sampling.max_new_tokens);
  sampling->set_seed(header.sampling.seed);
  v4rl::RoutingShape* routing = h->mutable_routing();
  routing->set_num_moe_layers(header.routing.num_moe_layers);
  routing->set_num_topk(header.routing.num_topk);
  routing->set_num_experts(header.routing.num_experts);
  proto.set_status(ToProto<v4rl::TrajectoryStatus>(meta.status));
  proto.set_num_prompt_tokens(meta.num_prompt_tokens);
  proto.set_num_completion_tokens(meta.num_completion_tokens);
  proto.set_num_chunks(meta.num_chunks);
  proto.set_max_weight_version(meta.max_weight_version);
  for (const Reward& reward : meta.rewards) {
    v4rl::Reward* r = proto.add_rewards();
    r->set_source(ToProto<v4rl::RewardSource>(reward.source));
    r->set_source_id(reward.source_id);
    r->set_value(reward.value);
    r->set_created_us(reward.created_us);
  }
  proto.set_created_us(meta.created_us);
  proto.set_updated_us(meta.updated_us);
  proto.set_finished_us(meta.finished_us);
  return proto.SerializeAsString();
}

absl::StatusOr<TrajectoryMeta> DecodeMeta(std::string_view bytes) {
  if (bytes.size() > kMaxMetaBytes) {
    return absl::DataLossError(absl::StrFormat("meta record has %d bytes; expected at most %d",
                                               bytes.size(), kMaxMetaBytes));
  }
  v4rl::TrajectoryMeta proto;
  V4RL_RETURN_IF_ERROR(Parse(bytes, "meta record", &proto));
  const std::string what = absl::StrFormat("meta record of trajectory %d", proto.id());
  TrajectoryMeta meta;
  meta.id = proto.id();
  const v4rl::TrajectoryHeader& h = proto.header();
  TrajectoryHeader& header = meta.header;
  header.job_id = h.job_id();
  header.group_id = h.group_id();
  header.teacher_id = h.teacher_id();
  header.policy_version = h.policy_version();
  V4RL_ASSIGN_OR_RETURN(header.mode, FromProto<ReasoningMode>(h.mode(), 3, what + ": mode"));
  header.sampling.temperature = h.sampling().temperature();
  header.sampling.top_p = h.sampling().top_p();
  header.sampling.top_k = h.sampling().top_k();
  header.sampling.max_new_tokens = h.sampling().max_new_tokens();
  header.sampling.seed = h.sampling().seed();
  header.routing.num_moe_layers = h.routing().num_moe_layers();
  header.routing.num_topk = h.routing().num_topk();
  header.routing.num_experts = h.routing().num_experts();
  if (absl::Status status = ValidateHeader(header); !status.ok()) return DataLoss(what, status);
  V4RL_ASSIGN_OR_RETURN(meta.status,
                        FromProto<TrajectoryStatus>(proto.status(), 4, what + ": status"));
  meta.num_prompt_tokens = proto.num_prompt_tokens();
  meta.num_completion_tokens = proto.num_completion_tokens();
  meta.num_chunks = proto.num_chunks();
  meta.max_weight_version = proto.max_weight_version();
  if (meta.id == 0) return absl::DataLossError(what + ": id is 0; ids start at 1");
  if (meta.num_prompt_tokens < 1 || meta.num_prompt_tokens > kMaxPromptTokens) {
    return absl::DataLossError(absl::StrFormat("%s: num_prompt_tokens is %d; expected 1..%d", what,
                                               meta.num_prompt_tokens, kMaxPromptTokens));
  }
  if (meta.num_completion_tokens < 0 || meta.num_completion_tokens > kMaxCompletionTokens) {
    return absl::DataLossError(absl::StrFormat("%s: num_completion_tokens is %d; expected 0..%d",
                                               what, meta.num_completion_tokens,
                                               kMaxCompletionTokens));
  }
  if (meta.num_chunks < (meta.num_completion_tokens > 0 ? 1 : 0) ||
      meta.num_chunks > meta.num_completion_tokens) {
    return absl::DataLossError(
        absl::StrFormat("%s: num_chunks is %d; expected 1..%d (one per append of >= 1 token)", what,
                        meta.num_chunks, meta.num_completion_tokens));
  }
  if (meta.max_weight_version < header.policy_version) {
    return absl::DataLossError(
        absl::StrFormat("%s: max_weight_version %d precedes policy_version %d", what,
                        meta.max_weight_version, header.policy_version));
  }
  if (proto.rewards_size() > kMaxRewards) {
    return absl::DataLossError(absl::StrFormat("%s: %d rewards; expected at most %d", what,
                                               proto.rewards_size(), kMaxRewards));
  }
  for (const v4rl::Reward& r : proto.rewards()) {
    Reward reward;
    V4RL_ASSIGN_OR_RETURN(reward.source,
                          FromProto<RewardSource>(r.source(), 2, what + ": reward.source"));
    reward.source_id = r.source_id();
    reward.value = r.value();
    reward.created_us = r.created_us();
    if (absl::Status status = ValidateReward(meta, reward); !status.ok()) {
      return DataLoss(what, status);
    }
    meta.rewards.push_back(std::move(reward));
  }
  meta.created_us = proto.created_us();
  meta.updated_us = proto.updated_us();
  meta.finished_us = proto.finished_us();
  return meta;
}

std::string EncodePrompt(absl::Span<const int32_t> prompt_token_ids) {
  v4rl::PromptRecord proto;
  proto.mutable_token_ids()->Add(prompt_token_ids.begin(), prompt_token_ids.end());
  return proto.SerializeAsString();
}

std::string EncodeTokenChunk(int64_t first_token, const CompletionTokens& chunk) {
  v4rl::TokenChunk proto;
  proto.set_first_token(first_token);
  proto.mutable_token_ids()->Add(chunk.token_ids.begin(), chunk.token_ids.end());
  proto.mutable_logprobs()->Add(chunk.logprobs.begin(), chunk.logprobs.end());
  proto.mutable_weight_versions()->Add(chunk.weight_versions.begin(), chunk.weight_versions.end());
  proto.mutable_kept_set_sizes()->Add(chunk.kept_set_sizes.begin(), chunk.kept_set_sizes.end());
  return proto.SerializeAsString();
}

std::string EncodeRoutingChunk(int64_t first_token, const RoutingShape& routing,
                               const CompletionTokens& chunk) {
  v4rl::RoutingChunk proto;
  proto.set_first_token(first_token);
  proto.set_num_tokens(chunk.num_tokens());
  std::string* ids = proto.mutable_expert_ids();
  const int bytes_per_id = routing.bytes_per_id();
  ids->reserve(chunk.routed_experts.size() * bytes_per_id);
  for (uint16_t id : chunk.routed_experts) {
    ids->push_back(static_cast<char>(id & 0xff));
    if (bytes_per_id == 2) ids->push_back(static_cast<char>(id >> 8));
  }
  return proto.SerializeAsString();
}

absl::StatusOr<Trajectory> DecodeTrajectory(const TrajectoryMeta& meta,
                                            const TrajectoryRecords& records, bool with_routing) {
  const std::string what = absl::StrFormat("trajectory %d", meta.id);
  Trajectory trajectory;
  trajectory.meta = meta;

  // Prompt
  v4rl::PromptRecord prompt;
  V4RL_RETURN_IF_ERROR(Parse(records.prompt, what + " prompt record", &prompt));
  if (prompt.token_ids_size() != meta.num_prompt_tokens) {
    return absl::DataLossError(absl::StrFormat("%s: prompt record has %d tokens; meta says %d",
                                               what, prompt.token_ids_size(),
                                               meta.num_prompt_tokens));
  }
  trajectory.prompt_token_ids.assign(prompt.token_ids().begin(), prompt.token_ids().end());
  for (int32_t token : trajectory.prompt_token_ids) {
    if (token < 0) {
      return absl::DataLossError(
          absl::StrFormat("%s: prompt record holds token id %d; expected >= 0", what, token));
    }
  }

  // Chunks: replay the appends against the state they were validated against when written.
  const RoutingShape& routing = meta.header.routing;
  const bool read_routing = with_routing && routing.enabled();
  if (static_cast<int64_t>(records.token_chunks.size()) != meta.num_chunks) {
    return absl::DataLossError(absl::StrFormat("%s: %d token chunks stored; meta says %d", what,
                                               records.token_chunks.size(), meta.num_chunks));
  }
  const size_t expected_routing_chunks = read_routing ? records.token_chunks.size() : 0;
  if (records.routing_chunks.size() != expected_routing_chunks) {
    return absl::DataLossError(absl::StrFormat("%s: %d routing chunks stored; expected %d", what,
                                               records.routing_chunks.size(),
                                               expected_routing_chunks));
  }
  TrajectoryMeta state;
  state.id = meta.id;
  state.header = meta.header;
  if (!read_routing) state.header.routing = RoutingShape{};
  state.max_weight_version = meta.header.policy_version;
  std::vector<CompletionTokens> chunks(records.token_chunks.size());
  for (size_t k = 0; k < chunks.size(); ++k) {
    const std::string chunk_what = absl::StrFormat("%s token chunk %d", what, k + 1);
    v4rl::TokenChunk proto;
    V4RL_RETURN_IF_ERROR(Parse(records.token_chunks[k], chunk_what, &proto));
    if (proto.first_token() != state.num_completion_tokens) {
      return absl::DataLossError(absl::StrFormat("%s: first_token is %d; expected %d", chunk_what,
                                                 proto.first_token(), state.num_completion_tokens));
    }
    CompletionTokens& chunk = chunks[k];
    chunk.token_ids.assign(proto.token_ids().begin(), proto.token_ids().end());
    chunk.logprobs.assign(proto.logprobs().begin(), proto.logprobs().end());
    chunk.weight_versions.assign(proto.weight_versions().begin(), proto.weight_versions().end());
    chunk.kept_set_sizes.assign(proto.kept_set_sizes().begin(), proto.kept_set_sizes().end());
    if (read_routing) {
      const std::string routing_what = absl::StrFormat("%s routing chunk %d", what, k + 1);
      v4rl::RoutingChunk routing_proto;
      V4RL_RETURN_IF_ERROR(Parse(records.routing_chunks[k], routing_what, &routing_proto));
      if (routing_proto.first_token() != proto.first_token() ||
          routing_proto.num_tokens() != chunk.num_tokens()) {
        return absl::DataLossError(
            absl::StrFormat("%s: covers tokens [%d, +%d); the token chunk covers [%d, +%d)",
                            routing_what, routing_proto.first_token(), routing_proto.num_tokens(),
                            proto.first_token(), chunk.num_tokens()));
      }
      const std::string& bytes = routing_proto.expert_ids();
      const int bytes_per_id = routing.bytes_per_id();
      const int64_t expected_bytes = routing.ids_per_token() * chunk.num_tokens() * bytes_per_id;
      if (static_cast<int64_t>(bytes.size()) != expected_bytes) {
        return absl::DataLossError(absl::StrFormat(
            "%s: expert_ids has %d bytes; expected %d (%d layers x %d tokens x %d topk x %d "
            "bytes)",
            routing_what, bytes.size(), expected_bytes, routing.num_moe_layers, chunk.num_tokens(),
            routing.num_topk, bytes_per_id));
      }
      chunk.routed_experts.resize(bytes.size() / bytes_per_id);
      for (size_t i = 0; i < chunk.routed_experts.size(); ++i) {
        uint16_t id = static_cast<uint8_t>(bytes[i * bytes_per_id]);
        if (bytes_per_id == 2)
          id |= static_cast<uint16_t>(static_cast<uint8_t>(bytes[2 * i + 1]) << 8);
        chunk.routed_experts[i] = id;
      }
    }
    if (absl::Status status = ValidateAppend(state, proto.first_token(), chunk); !status.ok()) {
      return DataLoss(chunk_what, status);
    }
    ApplyAppend(chunk, /*now_us=*/0, &state);
  }
  if (state.num_completion_tokens != meta.num_completion_tokens ||
      state.max_weight_version != meta.max_weight_version) {
    return absl::DataLossError(absl::StrFormat(
        "%s: chunks hold %d tokens up to weight version %d; meta says %d tokens up to %d", what,
        state.num_completion_tokens, state.max_weight_version, meta.num_completion_tokens,
        meta.max_weight_version));
  }
  trajectory.completion = ConcatenateChunks(chunks, routing, read_routing);
  return trajectory;
}

}  // namespace v4rl::store::codec
